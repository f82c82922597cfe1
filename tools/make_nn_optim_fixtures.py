#!/usr/bin/env python3
"""Write the PyTorch parity fixtures of the tensor-nn optimizers and LR schedulers.

What it makes, in ``tensor-nn/tests/fixtures/optim/``:

* ``<net>_data.json``, per network: ``{"net", "init": {param: tensor}, "batches": [{"x": tensor,
  "y": tensor (i64)}]}``, the initial weights and the ``STEPS`` batches every optimizer of
  that network trains from;

* ``<net>_<optimizer>.json``, one per training case: the network trained for ``STEPS`` steps
  with one optimizer under a warmup-cosine schedule:

      {
        "case": name,
        "net": "mlp" | "conv",
        "reference": the torch optimizer expression (for humans),
        "optimizer": {"name": ..., hyper-parameters...},
        "groups": [{"params": [names], "overrides": {hyper-parameter: value}}],
        "clip_norm": max_norm of clip_grad_norm_ before each step, or null,
        "schedule": {"warmup": w, "total": t, "min_lr_factor": f},
        "lrs": [...],                     # param_groups[0]["lr"] used at each step
        "losses": [...],                  # the loss of each step, before its update
        "final": {param: tensor}          # the weights after the last step
      }

* ``schedulers.json``: ``{"steps": n, "cases": [{"name", "reference", "params", "lrs"}]}``, the
  learning rate of ``n`` consecutive steps of each torch.optim.lr_scheduler configuration.

A tensor is ``{"shape": [...], "data": [row-major values]}`` plus ``"dtype": "i64"`` for labels;
float data are the exact float32 values written as decimal floats.

The nets (parameter names as in a torch state_dict):

* mlp: x[16, 8] -> fc1 (8->16) -> tanh -> fc2 (16->4) -> logits, labels in 0..4;
* conv: x[4, 1, 8, 8] -> conv (1->4, 3x3, bias) -> relu -> max_pool2d(2) -> flatten(36) -> fc (36->3).

The loss is ``F.cross_entropy`` (mean). The schedule is
``SequentialLR([LinearLR(start_factor=1/warmup, total_iters=warmup),
CosineAnnealingLR(T_max=total-warmup, eta_min=min_lr_factor*lr)], milestones=[warmup])``,
which is what ``tensor_nn::lr_scheduler::warmup_cosine`` computes. torch has no Lion: it is
implemented below by the paper's update rule (Chen et al. 2023, Algorithm 2, decoupled weight
decay): ``c = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - lr*sign(c); m = b2*m + (1-b2)*g``.

Everything runs on the CPU, single-threaded, float32, with the single-tensor (foreach=False)
optimizer code paths and seeds from ``crc32(net name)``, so re-running gives identical files.
Files not produced by this script are deleted from the fixture folder.

How to run (from the repository root, with a python that has torch; torch is never a
dependency of the repository and CI never runs this script):

    python tools/make_nn_optim_fixtures.py

Then run ``cargo test -p tensor-nn --test optim_parity`` (its ``CASES`` list must name every
training case; a test there checks that). Never hand-edit the fixtures: change this script
and re-run it.
"""

import json
import math
import sys
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler as lrs

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tensor-nn" / "tests" / "fixtures" / "optim"
STEPS = 20
SCHEDULE = dict(warmup=5, total=STEPS, min_lr_factor=0.1)
SCHEDULER_STEPS = 50
F32 = torch.float32


# ---- serialisation ----------------------------------------------------------------------------


def _num(v):
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def tensor_json(t):
    t = t.detach()
    out = {"shape": list(t.shape)}
    if t.dtype == torch.int64:
        out["dtype"] = "i64"
        out["data"] = [int(v) for v in t.reshape(-1).tolist()]
    else:
        out["data"] = [_num(v) for v in t.reshape(-1).tolist()]
    return out


# ---- the networks -----------------------------------------------------------------------------


def mlp_init():
    fc1, fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
    return {
        "fc1.weight": fc1.weight,
        "fc1.bias": fc1.bias,
        "fc2.weight": fc2.weight,
        "fc2.bias": fc2.bias,
    }


def mlp_forward(p, x):
    h = torch.tanh(F.linear(x, p["fc1.weight"], p["fc1.bias"]))
    return F.linear(h, p["fc2.weight"], p["fc2.bias"])


def mlp_batch():
    return torch.randn(16, 8, dtype=F32), torch.randint(0, 4, (16,))


def conv_init():
    conv, fc = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(36, 3)
    return {
        "conv.weight": conv.weight,
        "conv.bias": conv.bias,
        "fc.weight": fc.weight,
        "fc.bias": fc.bias,
    }


def conv_forward(p, x):
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv.weight"], p["conv.bias"])), 2)
    return F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"])


def conv_batch():
    return torch.randn(4, 1, 8, 8, dtype=F32), torch.randint(0, 3, (4,))


NETS = {
    "mlp": (mlp_init, mlp_forward, mlp_batch),
    "conv": (conv_init, conv_forward, conv_batch),
}


# ---- Lion by the paper ------------------------------------------------------------------------


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023), the update of Algorithm 2 with decoupled weight decay."""

    def __init__(self, params, lr, betas, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m, g = state["exp_avg"], p.grad
                c = m.mul(b1).add(g, alpha=1 - b1)
                p.mul_(1 - lr * wd)
                p.add_(torch.sign(c), alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)


# ---- the training cases -----------------------------------------------------------------------

# name, hyper-parameters (the Rust config fields), per-group overrides ("weights"/"biases" or
# None for one group), clip_grad_norm max_norm or None.
OPTIMIZERS = {
    "sgd": (
        dict(name="sgd", lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-3),
        None,
        1.0,
    ),
    "adam": (
        dict(name="adam", lr=0.01, betas=[0.9, 0.999], eps=1e-8, weight_decay=1e-3, amsgrad=False),
        None,
        None,
    ),
    "adamw_amsgrad": (
        dict(name="adamw", lr=0.01, betas=[0.9, 0.99], eps=1e-8, weight_decay=0.05, amsgrad=True),
        {"biases": {"weight_decay": 0.0}},
        None,
    ),
    "rmsprop_centered": (
        dict(name="rmsprop", lr=0.003, alpha=0.9, eps=1e-8, weight_decay=1e-3, momentum=0.5, centered=True),
        None,
        None,
    ),
    "adagrad": (
        dict(
            name="adagrad",
            lr=0.05,
            lr_decay=0.01,
            weight_decay=1e-3,
            initial_accumulator_value=0.1,
            eps=1e-10,
        ),
        None,
        None,
    ),
    "lion": (
        dict(name="lion", lr=0.002, betas=[0.9, 0.99], weight_decay=0.1),
        None,
        None,
    ),
}


def make_optimizer(hp, groups):
    kw = {k: v for k, v in hp.items() if k != "name"}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    name = hp["name"]
    if name == "sgd":
        return torch.optim.SGD(groups, foreach=False, **kw), f"SGD(foreach=False, **{kw})"
    if name == "adam":
        return torch.optim.Adam(groups, foreach=False, **kw), f"Adam(foreach=False, **{kw})"
    if name == "adamw":
        return torch.optim.AdamW(groups, foreach=False, **kw), f"AdamW(foreach=False, **{kw})"
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, foreach=False, **kw), f"RMSprop(foreach=False, **{kw})"
    if name == "adagrad":
        return torch.optim.Adagrad(groups, foreach=False, **kw), f"Adagrad(foreach=False, **{kw})"
    if name == "lion":
        return Lion(groups, **kw), f"Lion(**{kw})  # by the paper, see the script"
    raise ValueError(name)


def warmup_cosine(opt, lr):
    w, total = SCHEDULE["warmup"], SCHEDULE["total"]
    return lrs.SequentialLR(
        opt,
        [
            lrs.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=w),
            lrs.CosineAnnealingLR(opt, T_max=total - w, eta_min=SCHEDULE["min_lr_factor"] * lr),
        ],
        milestones=[w],
    )


def net_data(net):
    """The initial weights and batches of `net` (shared by all its optimizers)."""
    torch.manual_seed(zlib.crc32(net.encode()))
    init_fn, _, batch_fn = NETS[net]
    with torch.no_grad():
        init = {k: v.detach().clone().to(F32) for k, v in init_fn().items()}
    batches = [batch_fn() for _ in range(STEPS)]
    return init, batches


def train_case(net, opt_key, init, batches):
    name = f"{net}_{opt_key}"
    hp, group_overrides, clip = OPTIMIZERS[opt_key]
    _, forward, _ = NETS[net]
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}

    if group_overrides is None:
        groups_json = [{"params": list(params), "overrides": {}}]
        groups = [{"params": list(params.values())}]
    else:
        weights = [k for k in params if k.endswith("weight")]
        biases = [k for k in params if k.endswith("bias")]
        groups_json = [
            {"params": weights, "overrides": group_overrides.get("weights", {})},
            {"params": biases, "overrides": group_overrides.get("biases", {})},
        ]
        groups = [
            {"params": [params[k] for k in g["params"]], **g["overrides"]} for g in groups_json
        ]
    opt, reference = make_optimizer(hp, groups)
    sched = warmup_cosine(opt, hp["lr"])

    losses, lr_used = [], []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(params, x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip, foreach=False)
        lr_used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        losses.append(loss.item())
    for v in losses:
        assert math.isfinite(v), f"{name}: non-finite loss"

    fixture = {
        "case": name,
        "net": net,
        "reference": reference + " with warmup-cosine SequentialLR"
        + (f", clip_grad_norm_({clip})" if clip is not None else ""),
        "optimizer": hp,
        "groups": groups_json,
        "clip_norm": clip,
        "schedule": SCHEDULE,
        "lrs": lr_used,
        "losses": losses,
        "final": {k: tensor_json(v) for k, v in params.items()},
    }
    return name, fixture


# ---- scheduler dumps --------------------------------------------------------------------------

BASE_LR = 0.1

SCHEDULERS = [
    ("constant", "ConstantLR(factor=0.5, total_iters=4)", dict(factor=0.5, total_iters=4),
     lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=4)),
    ("linear_warmup", "LinearLR(start_factor=0.25, end_factor=1.0, total_iters=10)",
     dict(start_factor=0.25, end_factor=1.0, total_iters=10),
     lambda o: lrs.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=10)),
    ("linear_decay", "LinearLR(start_factor=1.0, end_factor=0.1, total_iters=30)",
     dict(start_factor=1.0, end_factor=0.1, total_iters=30),
     lambda o: lrs.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=30)),
    ("cosine", "CosineAnnealingLR(T_max=20, eta_min=0.01)", dict(t_max=20, eta_min=0.01),
     lambda o: lrs.CosineAnnealingLR(o, T_max=20, eta_min=0.01)),
    ("cosine_restarts", "CosineAnnealingWarmRestarts(T_0=7, T_mult=1, eta_min=0.001)",
     dict(t_0=7, t_mult=1, eta_min=0.001),
     lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=1, eta_min=0.001)),
    ("cosine_restarts_mult2", "CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=0.0)",
     dict(t_0=3, t_mult=2, eta_min=0.0),
     lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.0)),
    ("step", "StepLR(step_size=7, gamma=0.5)", dict(step_size=7, gamma=0.5),
     lambda o: lrs.StepLR(o, step_size=7, gamma=0.5)),
    ("multistep", "MultiStepLR(milestones=[5, 12, 12, 30], gamma=0.3)",
     dict(milestones=[5, 12, 12, 30], gamma=0.3),
     lambda o: lrs.MultiStepLR(o, milestones=[5, 12, 12, 30], gamma=0.3)),
    ("exponential", "ExponentialLR(gamma=0.93)", dict(gamma=0.93),
     lambda o: lrs.ExponentialLR(o, gamma=0.93)),
    ("polynomial", "PolynomialLR(total_iters=30, power=2.0)", dict(total_iters=30, power=2.0),
     lambda o: lrs.PolynomialLR(o, total_iters=30, power=2.0)),
    ("cyclic_triangular",
     "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=5, step_size_down=8, mode='triangular', cycle_momentum=False)",
     dict(base_lr=0.01, max_lr=0.1, step_size_up=5, step_size_down=8, mode="triangular"),
     lambda o: lrs.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=5, step_size_down=8,
                            mode="triangular", cycle_momentum=False)),
    ("cyclic_triangular2",
     "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=4, mode='triangular2', cycle_momentum=False)",
     dict(base_lr=0.01, max_lr=0.1, step_size_up=4, step_size_down=None, mode="triangular2"),
     lambda o: lrs.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4, mode="triangular2",
                            cycle_momentum=False)),
    ("cyclic_exp_range",
     "CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=6, mode='exp_range', gamma=0.97, cycle_momentum=False)",
     dict(base_lr=0.01, max_lr=0.1, step_size_up=6, step_size_down=None, mode="exp_range", gamma=0.97),
     lambda o: lrs.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=6, mode="exp_range",
                            gamma=0.97, cycle_momentum=False)),
    ("onecycle_cos", "OneCycleLR(max_lr=0.1, total_steps=50, cycle_momentum=False)",
     dict(max_lr=0.1, total_steps=50, pct_start=0.3, anneal="cos", div_factor=25.0,
          final_div_factor=1e4, three_phase=False),
     lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=50, cycle_momentum=False)),
    ("onecycle_linear_three_phase",
     "OneCycleLR(max_lr=0.1, total_steps=60, pct_start=0.25, anneal_strategy='linear', div_factor=10, "
     "final_div_factor=100, three_phase=True, cycle_momentum=False)",
     dict(max_lr=0.1, total_steps=60, pct_start=0.25, anneal="linear", div_factor=10.0,
          final_div_factor=100.0, three_phase=True),
     lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=60, pct_start=0.25,
                              anneal_strategy="linear", div_factor=10, final_div_factor=100,
                              three_phase=True, cycle_momentum=False)),
    ("sequential",
     "SequentialLR([LinearLR(start_factor=0.1, total_iters=10), ExponentialLR(gamma=0.9), "
     "StepLR(step_size=5, gamma=0.5)], milestones=[10, 25])",
     dict(milestones=[10, 25]),
     lambda o: lrs.SequentialLR(o, [lrs.LinearLR(o, start_factor=0.1, total_iters=10),
                                    lrs.ExponentialLR(o, gamma=0.9),
                                    lrs.StepLR(o, step_size=5, gamma=0.5)], milestones=[10, 25])),
    ("warmup_cosine",
     "SequentialLR([LinearLR(start_factor=1/8, total_iters=8), CosineAnnealingLR(T_max=32, "
     "eta_min=1e-3)], milestones=[8])  # warmup_cosine(0.1, 8, 40, 1e-3)",
     dict(warmup=8, total=40, min_lr=1e-3),
     lambda o: lrs.SequentialLR(o, [lrs.LinearLR(o, start_factor=1 / 8, total_iters=8),
                                    lrs.CosineAnnealingLR(o, T_max=32, eta_min=1e-3)],
                                milestones=[8])),
]


def scheduler_dumps():
    cases = []
    for name, reference, params, make in SCHEDULERS:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=BASE_LR)
        sched = make(opt)
        values = []
        for _ in range(SCHEDULER_STEPS):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        cases.append(dict(name=name, reference=reference, params=params, lrs=values))
    return {"steps": SCHEDULER_STEPS, "base_lr": BASE_LR, "cases": cases}


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import warnings

    # SequentialLR passes an epoch to step(), which torch deprecates; the values are what we want.
    warnings.filterwarnings("ignore", category=UserWarning)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for net in NETS:
        init, batches = net_data(net)
        data = {
            "net": net,
            "init": {k: tensor_json(v) for k, v in init.items()},
            "batches": [{"x": tensor_json(x), "y": tensor_json(y)} for x, y in batches],
        }
        (OUT_DIR / f"{net}_data.json").write_text(json.dumps(data) + "\n")
        written.append(f"{net}_data")
        for opt_key in OPTIMIZERS:
            name, fixture = train_case(net, opt_key, init, batches)
            (OUT_DIR / f"{name}.json").write_text(json.dumps(fixture) + "\n")
            written.append(name)
    (OUT_DIR / "schedulers.json").write_text(json.dumps(scheduler_dumps(), indent=1) + "\n")
    written.append("schedulers")
    for stale in sorted(OUT_DIR.glob("*")):
        if stale.stem not in written:
            stale.unlink()
            print(f"removed stale {stale.name}", file=sys.stderr)
    print(f"wrote {len(written)} fixtures to {OUT_DIR.relative_to(ROOT)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
