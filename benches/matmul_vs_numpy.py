#!/usr/bin/env python3
"""Compare tensor-engine's CPU matmul with numpy/OpenBLAS, GFLOP/s per shape.

Builds and runs `matmul_gflops` (cargo run --release -p tensor-benches --bin matmul_gflops)
with RAYON_NUM_THREADS, and times numpy's `a @ b` with OPENBLAS_NUM_THREADS set to the same
count, alternating the two per shape so that both see the same machine state. Medians of
--reps runs after --warmup runs. Other people share this machine: the script waits until the
1-minute load average is below --max-load before each shape, and prints the load it measured
under (the load average includes this script's own runs, which is why it waits per shape).

    python3 benches/matmul_vs_numpy.py                      # f32, 256 … 4096, 2 threads
    python3 benches/matmul_vs_numpy.py --dtype bf16 1024 1x576x1536 16x128x64x128
"""

import argparse
import json
import os
import subprocess
import sys
import time

THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="*", default=["256", "512", "1024", "2048", "4096"],
                   help="N (square), MxKxN, or BxMxKxN")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16", "f64"],
                   help="our dtype; numpy always runs f32 (f64 for f64): it has no bf16 GEMM")
    p.add_argument("--reps", type=int, default=0, help="timed runs per shape (default: by size)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs (and at least 0.25 s)")
    p.add_argument("--max-load", type=float, default=0.5)
    p.add_argument("--max-wait", type=float, default=900, help="seconds to wait for a quiet machine")
    return p.parse_args()


def parse_shape(s):
    v = [int(x) for x in s.split("x")]
    if len(v) == 1:
        return 1, v[0], v[0], v[0]
    if len(v) == 3:
        return (1, *v)
    if len(v) == 4:
        return tuple(v)
    raise SystemExit(f"bad shape {s!r}: use N, MxKxN or BxMxKxN")


def default_reps(b, m, k, n):
    macs = b * m * k * n
    return 5 if macs >= 2048**3 else 9 if macs >= 512**3 else 31


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_quiet(max_load, max_wait):
    t0 = time.time()
    while True:
        load = load1()
        if load < max_load:
            return load
        if time.time() - t0 > max_wait:
            print(f"warning: load still {load:.2f} after {max_wait:.0f} s; measuring anyway",
                  file=sys.stderr)
            return load
        print(f"load {load:.2f} >= {max_load}: waiting…", file=sys.stderr)
        time.sleep(20)


def build():
    cmd = ["cargo", "build", "--release", "-q", "-p", "tensor-benches", "--bin", "matmul_gflops"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                       "release", "matmul_gflops")
    return exe


def ours(exe, shape, dtype, reps, warmup, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    b, m, k, n = shape
    arg = f"{b}x{m}x{k}x{n}"
    out = subprocess.run([exe, "--dtype", dtype, "--reps", str(reps), "--warmup", str(warmup), arg],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["gflops"]


NUMPY_SNIPPET = r"""
import sys, time, json
import numpy as np
b, m, k, n, reps, warmup, f64 = (int(x) for x in sys.argv[1:8])
dt = np.float64 if f64 else np.float32
rng = np.random.default_rng(0)
shape_a = (m, k) if b == 1 else (b, m, k)
shape_b = (k, n) if b == 1 else (b, k, n)
x = rng.uniform(-1, 1, shape_a).astype(dt)
y = rng.uniform(-1, 1, shape_b).astype(dt)
t0 = time.perf_counter()
done = 0
while done < warmup or time.perf_counter() - t0 < 0.25:
    x @ y
    done += 1
ts = []
for _ in range(reps):
    t = time.perf_counter()
    x @ y
    ts.append(time.perf_counter() - t)
ts.sort()
print(json.dumps({"gflops": 2 * b * m * k * n / ts[len(ts) // 2] / 1e9}))
"""


def numpy_gflops(shape, dtype, reps, warmup, threads):
    env = dict(os.environ)
    for var in THREADS_ENV:
        env[var] = str(threads)
    args = [str(x) for x in (*shape, reps, warmup, int(dtype == "f64"))]
    out = subprocess.run([sys.executable, "-c", NUMPY_SNIPPET, *args], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["gflops"]


def main():
    args = parse_args()
    try:
        import numpy  # noqa: F401  (only to fail early with a clear message)
    except ImportError:
        raise SystemExit("numpy is missing: python3 -m pip install numpy")
    exe = build()
    rows = []
    for s in args.shapes:
        shape = parse_shape(s)
        reps = args.reps or default_reps(*shape)
        # Wait before every shape: the load average is what the other users left us.
        load = wait_for_quiet(args.max_load, args.max_wait)
        g_ours = ours(exe, shape, args.dtype, reps, args.warmup, args.threads)
        g_np = numpy_gflops(shape, args.dtype, reps, args.warmup, args.threads)
        rows.append((s, g_ours, g_np, load))
    np_dtype = "f64" if args.dtype == "f64" else "f32"
    print(f"matmul, {args.threads} threads, ours {args.dtype} vs numpy {np_dtype} "
          f"(median of reps after >= {args.warmup} warm-up runs and >= 0.25 s)")
    print(f"| {'size':>16} | {'ours GFLOP/s':>12} | {'numpy GFLOP/s':>13} | {'ratio':>5} "
          f"| {'load before':>11} |")
    print(f"| {'-' * 16} | {'-' * 12} | {'-' * 13} | {'-' * 5} | {'-' * 11} |")
    for s, g, n, load in rows:
        print(f"| {s:>16} | {g:12.1f} | {n:13.1f} | {g / n:5.2f} | {load:11.2f} |")


if __name__ == "__main__":
    main()
