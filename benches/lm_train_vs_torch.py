#!/usr/bin/env python3
"""One training step of a small transformer LM on the CPU: tensor-engine vs PyTorch, side by side.

Shape (both sides): vocab 4096, d_model 256, 4 pre-RMSNorm Llama blocks (4 heads, RoPE,
causal SDPA, SwiGLU with hidden 688), final RMSNorm, untied LM head; batch 16 × seq 128;
cross-entropy; AdamW (torch defaults, foreach). Each side runs in its own process (so peak RSS
is that process's alone), on the same number of threads, after warm-up steps; the script
prints median step time and peak RSS for both and the ratios (ours / torch, lower is better).

Run it with a python that has torch (torch is never a dependency of the repository):

    $TORCH_PY benches/lm_train_vs_torch.py [--threads 2] [--steps 10] [--rounds 3]

It builds the Rust side with `cargo build --release -p tensor-benches --bin lm_train_step`
and waits for the machine to be idle (load below --max-load) before each measurement.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_CHILD = r"""
import json, sys, time, math
import torch
import torch.nn as nn
import torch.nn.functional as F
threads, steps, warmup = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
V, D, L, H, T, B, HID = 4096, 256, 4, 4, 128, 16, 688
hd = D // H
inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
ang = torch.outer(torch.arange(T).float(), inv)
cos = torch.cat([ang.cos(), ang.cos()], -1)
sin = torch.cat([ang.sin(), ang.sin()], -1)
def rot(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)
class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.n1, s.n2 = nn.RMSNorm(D, eps=1e-5), nn.RMSNorm(D, eps=1e-5)
        s.q, s.k, s.v, s.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        s.g, s.u = nn.Linear(D, HID, bias=False), nn.Linear(D, HID, bias=False)
        s.d = nn.Linear(HID, D, bias=False)
    def forward(s, x):
        h = s.n1(x)
        q, k, v = (p(h).view(B, T, H, hd).transpose(1, 2) for p in (s.q, s.k, s.v))
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.o(a.transpose(1, 2).reshape(B, T, D))
        h = s.n2(x)
        return x + s.d(F.silu(s.g(h)) * s.u(h))
class LM(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Embedding(V, D)
        s.blocks = nn.ModuleList(Block() for _ in range(L))
        s.norm = nn.RMSNorm(D, eps=1e-5)
        s.head = nn.Linear(D, V, bias=False)
    def forward(s, ids):
        x = s.emb(ids)
        for b in s.blocks:
            x = b(x)
        return s.head(s.norm(x))
m = LM()
opt = torch.optim.AdamW(m.parameters())
times = []
for i in range(warmup + steps):
    g = torch.Generator().manual_seed(i)
    batch = torch.randint(0, V, (B, T + 1), generator=g)
    t = time.perf_counter()
    logits = m(batch[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, V), batch[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    last = loss.item()
    if i >= warmup:
        times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"impl": "pytorch " + torch.__version__,
                  "params": sum(p.numel() for p in m.parameters()),
                  "median_step_s": times[len(times) // 2], "min_step_s": times[0],
                  "last_loss": last}))
"""


def wait_idle(max_load, max_wait):
    t0 = time.time()
    while os.getloadavg()[0] >= max_load and time.time() - t0 < max_wait:
        print(f"load {os.getloadavg()[0]:.2f} >= {max_load}: waiting…", file=sys.stderr)
        time.sleep(15)
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-load", type=float, default=0.5)
    ap.add_argument("--max-wait", type=float, default=900)
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate ours/torch this many times and report each side's best "
                         "round (damps drift on a shared machine)")
    ap.add_argument("--bin", help="a prebuilt lm_train_step (skips the cargo build)")
    args = ap.parse_args()

    if args.bin:
        ours_bin = args.bin
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "tensor-benches", "--bin",
                        "lm_train_step"], cwd=ROOT, check=True)
        ours_bin = os.path.join(ROOT, "target", "release", "lm_train_step")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))

    # Separate processes; measure each one's peak RSS with a fresh wrapper so the
    # RUSAGE_CHILDREN maximum of one does not mask the other.
    def measure(cmd):
        wrapper = [sys.executable, "-c",
                   "import resource,subprocess,sys,json;"
                   "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
                   "sys.stderr.write(p.stderr);"
                   "print(p.stdout.strip().splitlines()[-1] if p.returncode==0 else '');"
                   "print(json.dumps({'rss_kib':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}));"
                   "sys.exit(p.returncode)"] + cmd
        p = subprocess.run(wrapper, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{cmd[0]} failed:\n{p.stderr}")
        lines = p.stdout.strip().splitlines()
        return json.loads(lines[-2]), json.loads(lines[-1])["rss_kib"] / 1024.0

    best = {}
    for rnd in range(args.rounds):
        for side, cmd in (("ours", [ours_bin, "--steps", str(args.steps), "--warmup",
                                    str(args.warmup)]),
                          ("torch", [sys.executable, "-c", TORCH_CHILD, str(args.threads),
                                     str(args.steps), str(args.warmup)])):
            load = wait_idle(args.max_load, args.max_wait)
            r, rss = measure(cmd)
            if args.rounds > 1:
                print(f"round {rnd + 1} {side}: {r['median_step_s'] * 1e3:.1f} ms "
                      f"(load {load:.2f})", flush=True)
            if side not in best or r["median_step_s"] < best[side][0]["median_step_s"]:
                best[side] = (r, rss, load)
    ours, rss_ours, load_ours = best["ours"]
    torch_r, rss_torch, load_torch = best["torch"]

    print(f"LM training step (d256, 4 layers, 4 heads, seq 128, batch 16, vocab 4096, AdamW), "
          f"{args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"| {'':22} | {'step (ms)':>9} | {'peak RSS (MiB)':>14} | {'params':>9} | {'load':>4} |")
    print(f"| {'-'*22} | {'-'*9} | {'-'*14} | {'-'*9} | {'-'*4} |")
    for name, r, rss, load in (("tensor-engine", ours, rss_ours, load_ours),
                               (torch_r["impl"], torch_r, rss_torch, load_torch)):
        print(f"| {name:22} | {r['median_step_s']*1e3:9.1f} | {rss:14.0f} | {r['params']:9d} | {load:4.2f} |")
    print(f"| {'ratio (ours / torch)':22} | {ours['median_step_s']/torch_r['median_step_s']:9.2f} "
          f"| {rss_ours/rss_torch:14.2f} | {'':9} | {'':4} |")


if __name__ == "__main__":
    main()
