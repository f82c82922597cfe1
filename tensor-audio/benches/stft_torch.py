#!/usr/bin/env python3
"""torch.stft + backward on the CPU, for comparison with the Rust timing in
`tensor-audio/tests/spectral.rs::bench_stft_forward_backward` (same sizes: 16 clips of one
second at 16 kHz, n_fft 1024, hop 256, Hann window, center, f32).

    python tensor-audio/benches/stft_torch.py [--threads 2]
"""

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 16000, generator=g)
    window = torch.hann_window(1024)
    w = torch.randn(16, 513, 63, 2, generator=g)

    def fwd(x):
        return torch.view_as_real(
            torch.stft(x, 1024, 256, window=window, center=True, return_complex=True)
        )

    def fwd_bwd():
        xv = x.clone().requires_grad_(True)
        (fwd(xv) * w).sum().backward()
        return xv.grad

    for _ in range(3):
        fwd_bwd()
    t = time.perf_counter()
    for _ in range(args.reps):
        fwd_bwd()
    both = (time.perf_counter() - t) / args.reps
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(args.reps):
            fwd(x)
        f = (time.perf_counter() - t) / args.reps
    print(
        f"torch {torch.__version__} stft [16, 16000] n_fft 1024 hop 256 f32: forward "
        f"{f * 1e3:.2f} ms, forward+backward {both * 1e3:.2f} ms ({args.threads} threads)"
    )


if __name__ == "__main__":
    main()
