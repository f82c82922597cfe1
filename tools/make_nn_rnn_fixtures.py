#!/usr/bin/env python3
"""Write the PyTorch parity fixtures of the tensor-nn recurrent layers (LSTM, GRU and cells).

What it makes: one JSON file per case in ``tensor-nn/tests/fixtures/rnn/<case>.json``:

    {
      "case": name,
      "reference": the torch module the fixture was computed with (for humans),
      "params": {"kind": "lstm" | "gru" | "lstm_cell" | "gru_cell", "input_size", "hidden_size",
                 "num_layers", "bias", "batch_first", "bidirectional"}
                (read by tensor-nn/tests/rnn_parity.rs),
      "weights": {name: tensor},  # the module's state_dict (PyTorch names)
      "inputs": {name: tensor},   # "x", and the initial state "h0" (and "c0") when the case has one
      "outputs": {name: tensor},  # "output", "h_n" (and "c_n"); a cell has "h" (and "c")
      "gy": {name: tensor},       # a fixed random upstream gradient for each output
      "grads": {name: tensor}     # d<Σ output·gy>/d<each input and each weight> by torch autograd
    }

where a tensor is ``{"shape": [...], "data": [row-major float64 values]}``.

Everything is computed in float64 on the CPU, single-threaded, with the module's default
initialisation and the inputs drawn after ``torch.manual_seed(crc32(case name))``, so re-running
gives byte-identical files and adding a case does not change the others. Files not produced by
this script are deleted from the fixture folder, so the folder always matches this list of
cases.

How to run (from the repository root, with a python that has torch; torch is never a
dependency of the repository and CI never runs this script):

    python tools/make_nn_rnn_fixtures.py

Then update ``CASES`` of tensor-nn/tests/rnn_parity.rs if cases were added or removed (a test
there checks that both lists agree) and run ``cargo test -p tensor-nn --test rnn_parity``.
Never hand-edit the fixtures: change this script and re-run it.
"""

import json
import sys
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tensor-nn" / "tests" / "fixtures" / "rnn"
MAX_BYTES = 60_000
F64 = torch.float64

# name: (kind, input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
#        seq_len, batch (None: unbatched input), with initial state)
CASES = {
    "lstm_1layer": ("lstm", 3, 4, 1, True, False, False, 5, 2, False),
    "lstm_1layer_h0": ("lstm", 3, 4, 1, True, False, False, 5, 2, True),
    "lstm_2layer_bidir_h0": ("lstm", 3, 4, 2, True, False, True, 4, 3, True),
    "lstm_batch_first_bidir": ("lstm", 2, 3, 1, True, True, True, 6, 2, True),
    "lstm_3layer_nobias_batch_first": ("lstm", 3, 3, 3, False, True, False, 4, 2, False),
    "lstm_unbatched_bidir": ("lstm", 3, 4, 2, True, False, True, 4, None, True),
    "gru_1layer": ("gru", 3, 4, 1, True, False, False, 5, 2, False),
    "gru_1layer_h0": ("gru", 3, 4, 1, True, False, False, 5, 2, True),
    "gru_2layer_bidir_h0": ("gru", 3, 4, 2, True, False, True, 4, 3, True),
    "gru_batch_first_bidir": ("gru", 2, 3, 1, True, True, True, 6, 2, True),
    "gru_3layer_nobias_batch_first": ("gru", 3, 3, 3, False, True, False, 4, 2, False),
    "gru_unbatched_bidir": ("gru", 3, 4, 2, True, False, True, 4, None, True),
    "lstm_cell": ("lstm_cell", 3, 4, 1, True, False, False, 1, 3, True),
    "lstm_cell_nobias": ("lstm_cell", 3, 4, 1, False, False, False, 1, 3, True),
    "gru_cell": ("gru_cell", 3, 4, 1, True, False, False, 1, 3, True),
    "gru_cell_nobias": ("gru_cell", 3, 4, 1, False, False, False, 1, 3, True),
}


def build_module(kind, inp, hid, layers, bias, batch_first, bidir):
    if kind == "lstm":
        return torch.nn.LSTM(inp, hid, layers, bias=bias, batch_first=batch_first, bidirectional=bidir, dtype=F64)
    if kind == "gru":
        return torch.nn.GRU(inp, hid, layers, bias=bias, batch_first=batch_first, bidirectional=bidir, dtype=F64)
    if kind == "lstm_cell":
        return torch.nn.LSTMCell(inp, hid, bias=bias, dtype=F64)
    if kind == "gru_cell":
        return torch.nn.GRUCell(inp, hid, bias=bias, dtype=F64)
    raise ValueError(kind)


def reference(kind, inp, hid, layers, bias, batch_first, bidir):
    if kind.endswith("_cell"):
        cls = "LSTMCell" if kind == "lstm_cell" else "GRUCell"
        return f"torch.nn.{cls}({inp}, {hid}, bias={bias})"
    cls = "LSTM" if kind == "lstm" else "GRU"
    return (
        f"torch.nn.{cls}({inp}, {hid}, num_layers={layers}, bias={bias}, "
        f"batch_first={batch_first}, bidirectional={bidir})"
    )


def run_case(name, spec):
    kind, inp, hid, layers, bias, batch_first, bidir, seq, batch, with_state = spec
    torch.manual_seed(zlib.crc32(name.encode()))
    module = build_module(kind, inp, hid, layers, bias, batch_first, bidir)
    dirs = 2 if bidir else 1
    cell = kind.endswith("_cell")
    if cell:
        x = torch.randn(batch, inp, dtype=F64)
        state_shape = (batch, hid)
    else:
        if batch is None:
            x = torch.randn(seq, inp, dtype=F64)
            state_shape = (layers * dirs, hid)
        elif batch_first:
            x = torch.randn(batch, seq, inp, dtype=F64)
            state_shape = (layers * dirs, batch, hid)
        else:
            x = torch.randn(seq, batch, inp, dtype=F64)
            state_shape = (layers * dirs, batch, hid)
    inputs = {"x": x}
    has_c = kind.startswith("lstm")
    if with_state:
        inputs["h0"] = torch.randn(*state_shape, dtype=F64) * 0.5
        if has_c:
            inputs["c0"] = torch.randn(*state_shape, dtype=F64) * 0.5
    live = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}

    if with_state:
        state = (live["h0"], live["c0"]) if has_c else live["h0"]
    else:
        state = None
    if cell:
        out = module(live["x"], state)
        if has_c:
            outputs = {"h": out[0], "c": out[1]}
        else:
            outputs = {"h": out}
    else:
        y, st = module(live["x"], state)
        if has_c:
            outputs = {"output": y, "h_n": st[0], "c_n": st[1]}
        else:
            outputs = {"output": y, "h_n": st}

    gy = {k: torch.randn(v.shape, dtype=F64) for k, v in outputs.items()}
    loss = sum((v * gy[k]).sum() for k, v in outputs.items())
    params = dict(module.named_parameters())
    wrt = list(live.items()) + list(params.items())
    grads = torch.autograd.grad(loss, [t for _, t in wrt])
    for (k, _), g in zip(wrt, grads):
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient of {k}"
        assert g.abs().max() > 0, f"{name}: zero gradient of {k}"

    meta = dict(
        kind=kind,
        input_size=inp,
        hidden_size=hid,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidir,
    )
    parts = [
        f'  "case": {json.dumps(name)}',
        f'  "reference": {json.dumps(reference(kind, inp, hid, layers, bias, batch_first, bidir))}',
        f'  "params": {json.dumps(meta)}',
        _section("weights", {k: v.detach() for k, v in params.items()}),
        _section("inputs", inputs),
        _section("outputs", {k: v.detach() for k, v in outputs.items()}),
        _section("gy", gy),
        _section("grads", {k: g for (k, _), g in zip(wrt, grads)}),
    ]
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)  # well-formed
    if len(text) > MAX_BYTES:
        raise SystemExit(f"{name}: fixture is {len(text)} bytes (limit {MAX_BYTES}); use smaller shapes")
    return text


def _tensor(t):
    assert t.dtype == F64, t.dtype
    data = t.detach().flatten().tolist()
    return '{"shape": ' + json.dumps(list(t.shape)) + ', "data": [' + ", ".join(repr(v) for v in data) + "]}"


def _section(name, tensors):
    body = ",\n".join(f'    "{k}": {_tensor(v)}' for k, v in tensors.items())
    return f'  "{name}": {{\n{body}\n  }}' if tensors else f'  "{name}": {{}}'


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, spec in CASES.items():
        (OUT_DIR / f"{name}.json").write_text(run_case(name, spec))
    for stale in sorted(OUT_DIR.glob("*.json")):
        if stale.stem not in CASES:
            stale.unlink()
            print(f"removed stale {stale.name}", file=sys.stderr)
    print(f"wrote {len(CASES)} fixtures to {OUT_DIR.relative_to(ROOT)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
