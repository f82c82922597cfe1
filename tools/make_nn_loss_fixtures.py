#!/usr/bin/env python3
"""Write the PyTorch parity fixtures of the tensor-nn loss functions.

What it makes: one JSON file per case in ``tensor-nn/tests/fixtures/losses/<case>.json``:

    {
      "case": name,
      "reference": the torch expression the fixture was computed with (for humans),
      "params": {"loss": which function, "reduction": ..., and its options}
                (read by tensor-nn/tests/loss_parity.rs),
      "inputs": {name: tensor},   # values before the loss ran
      "gy": tensor,               # the upstream gradient: random for reduction "none", else 1
      "output": tensor,           # the loss
      "grads": {name: tensor}     # d<output·gy>/d<input> by torch autograd, one per float input
                                  # torch differentiates (class weights and pos_weight are not)
    }

where a tensor is ``{"shape": [...], "data": [row-major values]}`` plus ``"dtype": "i64"`` for
class indices and ±1 labels (float tensors are f64 and carry no dtype). Non-finite values are
written as the strings "inf", "-inf" and "nan" (a mean over only ignored targets is nan in torch).

Everything is computed in float64 on the CPU, single-threaded, with inputs drawn from
``torch.manual_seed(crc32(case name))``, so re-running gives byte-identical files and adding a
case does not change the others. Files not produced by this script are deleted from the
fixture folder, so the folder always matches this list of cases.

How to run (from the repository root, with a python that has torch; torch is never a
dependency of the repository and CI never runs this script):

    python tools/make_nn_loss_fixtures.py

Then add or remove the matching names in ``CASES`` of tensor-nn/tests/loss_parity.rs (a test
there checks that both lists agree) and run ``cargo test -p tensor-nn --test loss_parity``.
``sigmoid_focal_loss`` follows torchvision.ops.sigmoid_focal_loss, re-stated below so that
torchvision is not needed. Never hand-edit the fixtures: change this script and re-run it.
"""

import json
import math
import sys
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tensor-nn" / "tests" / "fixtures" / "losses"
MAX_BYTES = 30_000
F64 = torch.float64
REDUCTIONS = ["none", "mean", "sum"]

CASES = []


def case(name, reference):
    """Register a case builder returning dict(inputs, grads, fn, params, nonfinite=False)."""

    def register(build):
        CASES.append((name, reference, build))
        return build

    return register


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=F64) * scale


def rand(*shape, lo=0.0, hi=1.0):
    return torch.rand(*shape, dtype=F64) * (hi - lo) + lo


def ints(hi, *shape):
    return torch.randint(0, hi, shape, dtype=torch.int64)


def with_ignored(t, ignore, frac=0.35):
    """Replace about `frac` of the class indices by `ignore` (at least one, never all)."""
    t = t.clone()
    flat = t.view(-1)
    k = max(1, min(flat.numel() - 1, round(flat.numel() * frac)))
    flat[torch.randperm(flat.numel())[:k]] = ignore
    return t


# ---- cross entropy and nll ---------------------------------------------------------------------


def _ce_case(name, shape, *, weight=False, ignore=None, mark_ignored=None, smoothing=0.0,
             probs=False, all_ignored=False, reductions=REDUCTIONS, loss="cross_entropy"):
    for red in reductions:
        ignore_index = -100 if ignore is None else ignore
        opts = []
        if weight:
            opts.append("weight=w")
        if ignore is not None:
            opts.append(f"ignore_index={ignore}")
        if smoothing:
            opts.append(f"label_smoothing={smoothing}")
        fname = "F.cross_entropy" if loss == "cross_entropy" else "F.nll_loss"
        opts.append(f'reduction="{red}"')
        ref = f"{fname}(x, target, {', '.join(opts)})  # x {list(shape)}"

        def build(red=red, ignore_index=ignore_index):
            c = shape[0] if len(shape) == 1 else shape[1]
            tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
            x = randn(*shape, scale=2.0)
            if probs:
                target = torch.softmax(randn(*shape, scale=2.0), dim=0 if len(shape) == 1 else 1)
            else:
                target = ints(c, *tshape)
                if all_ignored:
                    target = torch.full(tshape, ignore_index, dtype=torch.int64)
                elif mark_ignored:
                    target = with_ignored(target, ignore_index)
            inputs = dict(x=x, target=target)
            params = dict(loss=loss, reduction=red, label_smoothing=smoothing)
            if ignore is not None:
                params["ignore_index"] = ignore
            if weight:
                inputs["weight"] = rand(c, lo=0.2, hi=2.0)
            kw = dict(reduction=red, ignore_index=ignore_index)
            if loss == "cross_entropy":
                kw["label_smoothing"] = smoothing
                fn = lambda t: F.cross_entropy(t["x"], t["target"], weight=t.get("weight"), **kw)
            else:
                fn = lambda t: F.nll_loss(t["x"], t["target"], weight=t.get("weight"), **kw)
            return dict(
                inputs=inputs,
                params=params,
                grads=["x", "target"] if probs else ["x"],
                fn=fn,
                nonfinite=all_ignored and red == "mean",
            )

        case(f"{name}_{red}", ref)(build)


_ce_case("ce", (5, 4))
_ce_case("ce_weight", (6, 4), weight=True)
_ce_case("ce_ignore_default", (6, 4), mark_ignored=True, reductions=["none", "mean"])
_ce_case("ce_weight_ignore", (7, 4), weight=True, ignore=2, mark_ignored=True)
_ce_case("ce_all_ignored", (3, 4), all_ignored=True)
_ce_case("ce_weight_all_ignored", (3, 4), weight=True, ignore=1, all_ignored=True, reductions=["mean"])
_ce_case("ce_smooth", (5, 4), smoothing=0.1)
_ce_case("ce_smooth_weight_ignore", (7, 5), weight=True, ignore=0, mark_ignored=True, smoothing=0.2)
_ce_case("ce_smooth_all_ignored", (3, 4), smoothing=0.1, all_ignored=True, reductions=["mean", "sum"])
_ce_case("ce_probs", (5, 4), probs=True)
_ce_case("ce_probs_weight_smooth", (5, 4), probs=True, weight=True, smoothing=0.15)
_ce_case("ce_3d", (2, 4, 3))
_ce_case("ce_3d_weight_ignore_smooth", (3, 4, 5), weight=True, ignore=3, mark_ignored=True, smoothing=0.1)
_ce_case("ce_3d_probs", (2, 3, 4), probs=True, reductions=["none", "mean"])
_ce_case("ce_4d_weight_ignore", (2, 3, 2, 3), weight=True, ignore=1, mark_ignored=True, reductions=["mean"])
_ce_case("ce_unbatched", (5,), reductions=["none", "mean"])
_ce_case("ce_unbatched_probs_smooth", (5,), probs=True, smoothing=0.1, reductions=["sum"])
_ce_case("nll", (5, 4), loss="nll_loss")
_ce_case("nll_weight_ignore", (7, 4), weight=True, ignore=2, mark_ignored=True, loss="nll_loss")
_ce_case("nll_all_ignored", (3, 4), weight=True, all_ignored=True, reductions=["mean"], loss="nll_loss")
_ce_case("nll_3d", (2, 4, 3), weight=True, reductions=["none", "mean"], loss="nll_loss")
_ce_case("nll_unbatched", (4,), reductions=["sum"], loss="nll_loss")


# ---- binary cross entropy ----------------------------------------------------------------------


for red in REDUCTIONS:

    @case(f"bce_{red}", f'F.binary_cross_entropy(p, target, reduction="{red}")')
    def _(red=red):
        return dict(
            inputs=dict(p=rand(3, 4, lo=0.02, hi=0.98), target=rand(3, 4)),
            params=dict(loss="binary_cross_entropy", reduction=red),
            grads=["p", "target"],
            fn=lambda t: F.binary_cross_entropy(t["p"], t["target"], reduction=red),
        )

    @case(f"bce_weight_{red}", f'F.binary_cross_entropy(p, target, weight=w, reduction="{red}")  # w [4] broadcast')
    def _(red=red):
        return dict(
            inputs=dict(p=rand(3, 4, lo=0.02, hi=0.98), target=rand(3, 4), weight=rand(4, lo=0.2, hi=2.0)),
            params=dict(loss="binary_cross_entropy", reduction=red),
            grads=["p", "target"],
            fn=lambda t: F.binary_cross_entropy(t["p"], t["target"], weight=t["weight"], reduction=red),
        )

    @case(f"bce_logits_{red}", f'F.binary_cross_entropy_with_logits(x, target, reduction="{red}")')
    def _(red=red):
        return dict(
            inputs=dict(x=randn(3, 4, scale=3.0), target=rand(3, 4)),
            params=dict(loss="binary_cross_entropy_with_logits", reduction=red),
            grads=["x", "target"],
            fn=lambda t: F.binary_cross_entropy_with_logits(t["x"], t["target"], reduction=red),
        )

    @case(
        f"bce_logits_weight_pos_weight_{red}",
        f'F.binary_cross_entropy_with_logits(x, target, weight=w, pos_weight=pw, reduction="{red}")  # w [2,1,4], pw [4]',
    )
    def _(red=red):
        return dict(
            inputs=dict(
                x=randn(2, 3, 4, scale=3.0),
                target=rand(2, 3, 4),
                weight=rand(2, 1, 4, lo=0.2, hi=2.0),
                pos_weight=rand(4, lo=0.2, hi=3.0),
            ),
            params=dict(loss="binary_cross_entropy_with_logits", reduction=red),
            grads=["x", "target"],
            fn=lambda t: F.binary_cross_entropy_with_logits(
                t["x"], t["target"], weight=t["weight"], pos_weight=t["pos_weight"], reduction=red
            ),
        )


@case("bce_saturated_sum", 'F.binary_cross_entropy(p, target, reduction="sum")  # p hits 0 and 1: log clamped at -100')
def _():
    return dict(
        inputs=dict(p=torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5], dtype=F64), target=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=F64)),
        params=dict(loss="binary_cross_entropy", reduction="sum"),
        grads=[],
        fn=lambda t: F.binary_cross_entropy(t["p"], t["target"], reduction="sum"),
    )


@case("bce_logits_extreme_none", 'F.binary_cross_entropy_with_logits(x, target, reduction="none")  # |x| up to 800')
def _():
    x = torch.tensor([-800.0, -60.0, -25.0, -3.0, 0.0, 0.0, 4.0, 30.0, 700.0], dtype=F64)
    return dict(
        inputs=dict(x=x, target=rand(9)),
        params=dict(loss="binary_cross_entropy_with_logits", reduction="none"),
        grads=["x", "target"],
        fn=lambda t: F.binary_cross_entropy_with_logits(t["x"], t["target"], reduction="none"),
    )


# ---- sigmoid focal loss (torchvision.ops.sigmoid_focal_loss, re-stated) -------------------------


def sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction):
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _focal(name, alpha, gamma, soft, reductions):
    for red in reductions:

        @case(f"{name}_{red}", f'torchvision.ops.sigmoid_focal_loss(x, target, alpha={alpha}, gamma={gamma}, reduction="{red}")')
        def _(red=red):
            target = rand(4, 5) if soft else (torch.rand(4, 5) < 0.3).to(F64)
            return dict(
                inputs=dict(x=randn(4, 5, scale=2.5), target=target),
                params=dict(loss="sigmoid_focal_loss", reduction=red, alpha=alpha, gamma=gamma),
                grads=["x", "target"],
                fn=lambda t: sigmoid_focal_loss(t["x"], t["target"], alpha, gamma, red),
            )


_focal("focal", 0.25, 2.0, False, REDUCTIONS)
_focal("focal_no_alpha_gamma0", -1.0, 0.0, False, ["mean"])
_focal("focal_soft_gamma1_5", 0.6, 1.5, True, ["sum"])


# ---- regression losses ---------------------------------------------------------------------------


def _pointwise(name, loss, ref, fn, params=None, reductions=REDUCTIONS, shape=(3, 5)):
    for red in reductions:

        @case(f"{name}_{red}", ref.format(red=red))
        def _(red=red):
            return dict(
                inputs=dict(input=randn(*shape), target=randn(*shape)),
                params=dict(loss=loss, reduction=red, **(params or {})),
                grads=["input", "target"],
                fn=lambda t: fn(t["input"], t["target"], red),
            )


_pointwise("mse", "mse_loss", 'F.mse_loss(x, y, reduction="{red}")', lambda x, y, r: F.mse_loss(x, y, reduction=r))
_pointwise("l1", "l1_loss", 'F.l1_loss(x, y, reduction="{red}")', lambda x, y, r: F.l1_loss(x, y, reduction=r))
_pointwise(
    "smooth_l1", "smooth_l1_loss", 'F.smooth_l1_loss(x, y, beta=0.8, reduction="{red}")',
    lambda x, y, r: F.smooth_l1_loss(x, y, beta=0.8, reduction=r), dict(beta=0.8),
)
_pointwise(
    "smooth_l1_beta0", "smooth_l1_loss", 'F.smooth_l1_loss(x, y, beta=0.0, reduction="{red}")',
    lambda x, y, r: F.smooth_l1_loss(x, y, beta=0.0, reduction=r), dict(beta=0.0), ["mean"],
)
_pointwise(
    "huber", "huber_loss", 'F.huber_loss(x, y, delta=0.7, reduction="{red}")',
    lambda x, y, r: F.huber_loss(x, y, delta=0.7, reduction=r), dict(delta=0.7),
)
_pointwise(
    "huber_delta2_3d", "huber_loss", 'F.huber_loss(x, y, delta=2.0, reduction="{red}")  # [2,3,4]',
    lambda x, y, r: F.huber_loss(x, y, delta=2.0, reduction=r), dict(delta=2.0), ["sum"], (2, 3, 4),
)


def _kl(name, log_target, reductions, zero_target=False):
    for red in reductions:

        @case(f"{name}_{red}", f'F.kl_div(input, target, reduction="{red}", log_target={log_target})')
        def _(red=red):
            x = torch.log_softmax(randn(3, 4), dim=1)
            target = torch.softmax(randn(3, 4), dim=1)
            if zero_target:
                target[0, 1] = 0.0
                target[2, 3] = 0.0
            if log_target:
                target = target.log()
            return dict(
                inputs=dict(input=x, target=target),
                params=dict(loss="kl_div", reduction=red, log_target=log_target),
                # torch's gradient of xlogy(t, t) at t = 0 is nan; only the input's is checked then.
                grads=["input"] if zero_target else ["input", "target"],
                fn=lambda t: F.kl_div(t["input"], t["target"], reduction=red, log_target=log_target),
            )


_kl("kl_div", False, ["none", "mean", "sum", "batchmean"])
_kl("kl_div_log_target", True, ["none", "batchmean"])
_kl("kl_div_zero_target", False, ["sum"], zero_target=True)


# ---- embedding / contrastive losses ----------------------------------------------------------------


def _info_nce(name, n, m, symmetric, reductions, tau=0.2):
    for red in reductions:
        if symmetric:
            ref = (f"(F.cross_entropy(q @ k.T / {tau}, arange, reduction=\"{red}\") + "
                   f"F.cross_entropy(k @ q.T / {tau}, arange, reduction=\"{red}\")) / 2")
        else:
            ref = f'F.cross_entropy(q @ k.T / {tau}, torch.arange(N), reduction="{red}")  # q [{n},3], k [{m},3]'

        @case(f"{name}_{red}", ref)
        def _(red=red):
            def fn(t):
                labels = torch.arange(n)
                out = F.cross_entropy(t["query"] @ t["keys"].T / tau, labels, reduction=red)
                if symmetric:
                    out = (out + F.cross_entropy(t["keys"] @ t["query"].T / tau, labels, reduction=red)) / 2
                return out

            return dict(
                inputs=dict(query=randn(n, 3), keys=randn(m, 3)),
                params=dict(loss="info_nce_symmetric" if symmetric else "info_nce", reduction=red, temperature=tau),
                grads=["query", "keys"],
                fn=fn,
            )


_info_nce("info_nce", 4, 4, False, REDUCTIONS)
_info_nce("info_nce_extra_keys", 3, 6, False, ["mean"], tau=0.5)
_info_nce("info_nce_symmetric", 4, 4, True, ["none", "mean"])

for red in REDUCTIONS:

    @case(f"cosine_embedding_{red}", f'F.cosine_embedding_loss(x1, x2, y, margin=0.1, reduction="{red}")  # y in ±1')
    def _(red=red):
        y = torch.where(torch.rand(6) < 0.5, 1, -1).to(torch.int64)
        return dict(
            inputs=dict(x1=randn(6, 4), x2=randn(6, 4), y=y),
            params=dict(loss="cosine_embedding_loss", reduction=red, margin=0.1),
            grads=["x1", "x2"],
            fn=lambda t: F.cosine_embedding_loss(t["x1"], t["x2"], t["y"], margin=0.1, reduction=red),
        )


@case("cosine_embedding_unbatched_sum", 'F.cosine_embedding_loss(x1, x2, y, margin=-0.2, reduction="sum")  # 1-D inputs')
def _():
    return dict(
        inputs=dict(x1=randn(5), x2=randn(5), y=torch.tensor(-1, dtype=torch.int64)),
        params=dict(loss="cosine_embedding_loss", reduction="sum", margin=-0.2),
        grads=["x1", "x2"],
        fn=lambda t: F.cosine_embedding_loss(t["x1"], t["x2"], t["y"], margin=-0.2, reduction="sum"),
    )


def contrastive(x1, x2, y, margin, reduction):
    """Hadsell et al. 2006 with y = 1 for similar pairs: y·d²/2 + (1−y)·max(0, margin − d)²/2."""
    d = F.pairwise_distance(x1, x2, p=2.0, eps=1e-6)
    loss = 0.5 * y * d**2 + 0.5 * (1 - y) * torch.clamp_min(margin - d, 0) ** 2
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


for red in REDUCTIONS:

    @case(f"contrastive_{red}", f'y·d²/2 + (1−y)·relu(2.5 − d)²/2, d = F.pairwise_distance(x1, x2)  # reduction "{red}"')
    def _(red=red):
        return dict(
            inputs=dict(x1=randn(6, 3), x2=randn(6, 3), y=(torch.rand(6) < 0.5).to(F64)),
            params=dict(loss="contrastive_loss", reduction=red, margin=2.5),
            grads=["x1", "x2"],
            fn=lambda t: contrastive(t["x1"], t["x2"], t["y"], 2.5, red),
        )


def _triplet(name, shape, margin, p, eps, swap, reductions):
    for red in reductions:

        @case(f"{name}_{red}",
              f'F.triplet_margin_loss(a, pos, neg, margin={margin}, p={p}, eps={eps}, swap={swap}, reduction="{red}")')
        def _(red=red):
            return dict(
                inputs=dict(anchor=randn(*shape), positive=randn(*shape), negative=randn(*shape)),
                params=dict(loss="triplet_margin_loss", reduction=red, margin=margin, p=p, eps=eps, swap=swap),
                grads=["anchor", "positive", "negative"],
                fn=lambda t: F.triplet_margin_loss(
                    t["anchor"], t["positive"], t["negative"], margin=margin, p=p, eps=eps, swap=swap, reduction=red
                ),
            )


_triplet("triplet", (6, 4), 1.0, 2.0, 1e-6, False, REDUCTIONS)
_triplet("triplet_swap_p1", (6, 4), 0.5, 1.0, 1e-6, True, ["none", "mean"])
_triplet("triplet_p3_eps", (5, 3), 2.0, 3.0, 1e-3, False, ["sum"])
_triplet("triplet_unbatched", (4,), 3.0, 2.0, 1e-6, True, ["none"])


# ---- writing --------------------------------------------------------------------------------------


def _num(v):
    if isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, float) and not math.isfinite(v):
        return '"nan"' if math.isnan(v) else ('"inf"' if v > 0 else '"-inf"')
    return repr(v) if isinstance(v, float) else json.dumps(v)


def _tensor(t):
    if t.dtype == torch.int64:
        dtype, data = "i64", t.flatten().tolist()
    elif t.dtype == F64:
        dtype, data = None, t.detach().flatten().tolist()
    else:
        raise TypeError(f"unexpected dtype {t.dtype}")
    head = '{"shape": ' + json.dumps(list(t.shape))
    if dtype:
        head += ', "dtype": "' + dtype + '"'
    return head + ', "data": [' + ", ".join(_num(v) for v in data) + "]}"


def _section(name, tensors):
    body = ",\n".join(f'    "{k}": {_tensor(v)}' for k, v in tensors.items())
    return f'  "{name}": {{\n{body}\n  }}' if tensors else f'  "{name}": {{}}'


def _params(p):
    return "{" + ", ".join(f"{json.dumps(k)}: {_num(v)}" for k, v in p.items()) + "}"


def build_fixture(name, reference, build):
    torch.manual_seed(zlib.crc32(name.encode()))
    spec = build()
    inputs = spec["inputs"]
    grad_names = spec["grads"]
    for g in grad_names:
        assert inputs[g].dtype == F64, f"{name}: grad input {g} is not float64"
    live = {k: (v.clone().requires_grad_(True) if k in grad_names else v.clone()) for k, v in inputs.items()}
    y = spec["fn"](live)
    assert y.dtype == F64, f"{name}: output dtype {y.dtype}"
    if not spec.get("nonfinite"):
        assert torch.isfinite(y).all(), f"{name}: output not finite"
    gy = torch.randn(y.shape, dtype=F64) if y.dim() > 0 else torch.ones((), dtype=F64)
    if spec["params"]["reduction"] == "none" and y.dim() == 0:
        gy = torch.randn((), dtype=F64)
    grads = torch.autograd.grad(y, [live[g] for g in grad_names], gy) if grad_names else []
    for g, gr in zip(grad_names, grads):
        assert torch.isfinite(gr).all(), f"{name}: non-finite gradient of {g}"

    parts = [
        f'  "case": {json.dumps(name)}',
        f'  "reference": {json.dumps(reference)}',
        f'  "params": {_params(spec["params"])}',
        _section("inputs", inputs),
        f'  "gy": {_tensor(gy)}',
        f'  "output": {_tensor(y.detach())}',
        _section("grads", dict(zip(grad_names, grads))),
    ]
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)  # well-formed
    if len(text) > MAX_BYTES:
        raise SystemExit(f"{name}: fixture is {len(text)} bytes (limit {MAX_BYTES}); use smaller shapes")
    return text


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = [n for n, _, _ in CASES]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate case names: {sorted(dupes)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, reference, build in CASES:
        (OUT_DIR / f"{name}.json").write_text(build_fixture(name, reference, build))
    for stale in sorted(OUT_DIR.glob("*.json")):
        if stale.stem not in names:
            stale.unlink()
            print(f"removed stale {stale.name}", file=sys.stderr)
    print(f"wrote {len(CASES)} fixtures to {OUT_DIR.relative_to(ROOT)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
