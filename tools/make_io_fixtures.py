#!/usr/bin/env python3
"""Fixtures for the checkpoint readers of ``tensor-io`` (``tensor-io/tests/pth.rs`` and
``tensor-io/tests/safetensors_io.rs``), written to ``tensor-io/tests/fixtures/io/``.

PyTorch files (``torch.save``, zip format):

* ``pytorch_model.bin`` — the ``state_dict`` of a tiny module with f32 (Linear), f16 (Embedding),
  bf16 (LayerNorm) weights and i64/i32/i8/u8/bool/f64 buffers.
* ``views.pth`` — a transposed (non-contiguous) tensor, two tensors sharing one storage at
  different offsets, a strided slice, an expanded (stride 0) tensor, a 0-d and an empty tensor.
* ``views_deflate.pth`` — ``views.pth`` re-packed with deflate compression (other zip tools).
* ``nested.pth`` — a training checkpoint: ``{"model": state_dict, "epoch": 3, "optimizer":
  {...}, "name": "run-1"}``.
* ``legacy.pth`` — the pre-1.6 non-zip format (must be refused clearly).
* ``evil.pth`` — a pickle that would call ``os.system`` (must be refused, never run).

safetensors files: ``module.safetensors`` (the same state dict, with ``__metadata__``) and a
sharded copy in ``sharded/`` (``model.safetensors.index.json`` + two shards).

``expected.json`` holds, per file, every tensor's name (in order), dtype, shape and values
(row-major, as float64; bool as 0/1).

Run with a python that has torch and safetensors (never a dependency of the repository; CI
only reads the committed fixtures):

    $TORCH_PY tools/make_io_fixtures.py
"""

import collections
import json
import os
import shutil
import zipfile

import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tensor-io", "tests", "fixtures", "io")

ST_DTYPE = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.emb = nn.Embedding(5, 2).half()
        self.norm = nn.LayerNorm(3).to(torch.bfloat16)
        with torch.no_grad():
            self.norm.weight.copy_(torch.tensor([0.5, 1.25, -2.0]))
            self.norm.bias.copy_(torch.tensor([0.125, 0.0, 3.5]))
        self.register_buffer("steps", torch.tensor([1, -2, 3_000_000_000_000], dtype=torch.int64))
        self.register_buffer("counts", torch.tensor([[7, -8], [9, 2**31 - 1]], dtype=torch.int32))
        self.register_buffer("small", torch.tensor([-128, 0, 127], dtype=torch.int8))
        self.register_buffer("bytes", torch.tensor([0, 1, 255], dtype=torch.uint8))
        self.register_buffer("mask", torch.tensor([True, False, True, True]))
        self.register_buffer("scale", torch.tensor([0.1, -1e300], dtype=torch.float64))


def describe(tensors):
    """name → {dtype, shape, values} in insertion order."""
    out = collections.OrderedDict()
    for name, t in tensors.items():
        out[name] = {
            "dtype": ST_DTYPE[t.dtype],
            "shape": list(t.shape),
            "values": t.detach().contiguous().reshape(-1).to(torch.float64).tolist(),
        }
    return out


def flatten(obj, prefix=""):
    """Tensors of a nested dict/list under dotted names, as the Rust reader names them."""
    out = collections.OrderedDict()
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "sharded"))
    torch.manual_seed(0)
    expected = {}

    model = Tiny()
    # Clones: the optimizer step below must not change what was saved.
    sd = collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    torch.save(sd, os.path.join(OUT, "pytorch_model.bin"))
    expected["pytorch_model.bin"] = describe(flatten(sd))

    base = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    shared = torch.arange(10, dtype=torch.float32) * 0.5
    grid = torch.arange(20, dtype=torch.float64).reshape(4, 5)
    views = collections.OrderedDict(
        [
            ("transposed", base.t()),
            ("shared_a", shared[0:6].view(2, 3)),
            ("shared_b", shared[4:10]),
            ("strided", grid[1:, ::2]),
            ("expanded", torch.tensor([1.5, -2.5, 4.0]).expand(2, 3)),
            ("scalar", torch.tensor(7.25)),
            ("empty", torch.zeros(0, 3)),
        ]
    )
    assert not views["transposed"].is_contiguous()
    assert views["shared_b"].storage_offset() == 4
    torch.save(views, os.path.join(OUT, "views.pth"))
    expected["views.pth"] = describe(flatten(views))

    with zipfile.ZipFile(os.path.join(OUT, "views.pth")) as src, zipfile.ZipFile(
        os.path.join(OUT, "views_deflate.pth"), "w", compression=zipfile.ZIP_DEFLATED
    ) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    expected["views_deflate.pth"] = expected["views.pth"]

    opt = torch.optim.Adam([model.lin.weight], lr=0.01)
    model.lin.weight.sum().backward()
    opt.step()
    nested = {
        "model": collections.OrderedDict((k, sd[k]) for k in ["lin.weight", "lin.bias"]),
        "epoch": 3,
        "optimizer": opt.state_dict(),
        "name": "run-1",
    }
    torch.save(nested, os.path.join(OUT, "nested.pth"))
    expected["nested.pth"] = describe(flatten(nested))

    torch.save(
        {"w": torch.ones(2)},
        os.path.join(OUT, "legacy.pth"),
        _use_new_zipfile_serialization=False,
    )
    torch.save({"x": Evil()}, os.path.join(OUT, "evil.pth"))

    save_file(sd, os.path.join(OUT, "module.safetensors"), metadata={"format": "pt", "note": "tiny"})
    expected["module.safetensors"] = expected["pytorch_model.bin"]
    names = list(sd.keys())
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, os.path.join(OUT, "sharded", file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(os.path.join(OUT, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    total = 0
    for dirpath, _, files in os.walk(OUT):
        for fn in files:
            total += os.path.getsize(os.path.join(dirpath, fn))
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
