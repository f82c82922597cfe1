#!/usr/bin/env python3
"""The CUDA backend against PyTorch on the same GPU, in the same run, side by side.

Run it on the GPU host (it needs torch and transformers there, and the `gpu_bench` binary
built on the CPU machine by scripts/gpu-build.sh):

    python3 benches/gpu_vs_torch.py --bin .carry/bin/gpu_bench [--skip-compile] [--only gemm,decode,train]

Measures, each side in its own process:
- bf16 GEMM at 4096³ and 8192³: TFLOP/s (median of 20 after 3 warm-ups), ours vs torch.matmul;
- decode at batch 1 of a Llama-3.2-1B-shaped model with random bf16 weights after a 128-token
  prompt: our fused decoder vs HF transformers eager and (unless --skip-compile) HF with a
  static cache under torch.compile; and the floor: the bytes of the weights read once per
  token at the device-to-device copy bandwidth measured here;
- one GPT-2-small-shaped training step (batch 8 × 1024, bf16 autocast, AdamW): ours vs
  PyTorch eager (HF GPT2LMHeadModel with SDPA attention).
Prints JSON lines as it goes and a table last.
"""

import argparse
import json
import os
import subprocess
import sys
import time

TORCH_GEMM = r"""
import json, sys, torch
for n in [int(x) for x in sys.argv[1].split(',')]:
    a = torch.randn(n, n, device='cuda', dtype=torch.bfloat16)
    b = torch.randn(n, n, device='cuda', dtype=torch.bfloat16)
    for _ in range(3): a @ b
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); c = a @ b; e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    ts.sort(); t = ts[len(ts) // 2]
    print(json.dumps({"bench": "gemm_bf16", "n": n, "ms": t * 1e3, "tflops": 2 * n ** 3 / t / 1e12}))
"""

TORCH_COPY = r"""
import json, torch
x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda')
y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize()
ts = []
for _ in range(20):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); y.copy_(x); e.record(); torch.cuda.synchronize()
    ts.append(s.elapsed_time(e) / 1e3)
ts.sort(); t = ts[len(ts) // 2]
print(json.dumps({"bench": "copy", "gb_s": 2 * x.numel() / t / 1e9}))
"""

TORCH_DECODE = r"""
import json, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
mode, prompt, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                  max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True,
                  torch_dtype=torch.bfloat16)
with torch.device('cuda'):
    m = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
ids = torch.tensor([[(i * 7919 + 13) % 128256 for i in range(prompt)]], device='cuda')
kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
if mode == 'compiled':
    # With a static cache, generate() compiles the decoding forward itself (transformers'
    # compile_config); wrapping m.forward in torch.compile(mode='reduce-overhead') by hand
    # breaks on CUDA-graph outputs being overwritten between steps.
    m.generation_config.cache_implementation = 'static'
with torch.no_grad():
    for _ in range(3 if mode == 'compiled' else 1):
        m.generate(ids, **kw)
    torch.cuda.synchronize()
    # Time prefill + 1 token, and prefill + N tokens: the difference is N-1 decode steps.
    t = time.perf_counter(); m.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False); torch.cuda.synchronize()
    t1 = time.perf_counter() - t
    t = time.perf_counter(); m.generate(ids, **kw); torch.cuda.synchronize()
    tn = time.perf_counter() - t
print(json.dumps({"bench": "decode_hf_" + mode, "decode_tok_s": (tokens - 1) / (tn - t1)}))
"""

TORCH_TRAIN = r"""
import json, sys, time, torch
from transformers import GPT2Config, GPT2LMHeadModel
batch, seq, steps, warmup = (int(x) for x in sys.argv[1:5])
torch.manual_seed(0)
cfg = GPT2Config(n_positions=seq, n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
m = GPT2LMHeadModel(cfg).cuda().train()
m.config._attn_implementation = 'sdpa'
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
ts, loss = [], None
for s in range(warmup + steps):
    data = torch.randint(0, 50257, (batch, seq + 1), device='cuda')
    torch.cuda.synchronize(); t = time.perf_counter()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        logits = m(data[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), data[:, 1:].reshape(-1))
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    if s >= warmup: ts.append(time.perf_counter() - t)
ts.sort()
print(json.dumps({"bench": "train_gpt2_torch_eager", "step_ms": ts[len(ts) // 2] * 1e3, "loss": loss.item()}))
"""


def run(cmd, timeout=900):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    for o in out:
        print(json.dumps(o), flush=True)
    if p.returncode != 0:
        print(f"FAILED ({p.returncode}) {' '.join(cmd[:3])}: {p.stderr[-3000:]}", flush=True)
    print(f"  ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    return out


def py(src, *args):
    return run([sys.executable, "-c", src, *[str(a) for a in args]])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=".carry/bin/gpu_bench")
    ap.add_argument("--only", default="gemm,decode,train")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    only = set(a.only.split(","))
    rows = []
    if "gemm" in only:
        ours = {o["n"]: o for o in run([a.bin, "gemm", "--sizes", "4096,8192"])}
        theirs = {o["n"]: o for o in py(TORCH_GEMM, "4096,8192")}
        for n in (4096, 8192):
            if n in ours and n in theirs:
                rows.append((f"bf16 GEMM {n}³ (TFLOP/s, higher is better)", ours[n]["tflops"],
                             theirs[n]["tflops"], "PyTorch", ours[n]["tflops"] / theirs[n]["tflops"]))
    if "decode" in only:
        ours = run([a.bin, "decode", "--tokens", str(a.tokens)])
        copy = py(TORCH_COPY)
        eager = py(TORCH_DECODE, "eager", 128, a.tokens)
        comp = [] if a.skip_compile else py(TORCH_DECODE, "compiled", 128, a.tokens)
        if ours:
            o = ours[0]["decode_tok_s"]
            if eager:
                rows.append(("Llama-1B-shaped decode (tok/s)", o, eager[0]["decode_tok_s"], "HF eager",
                             o / eager[0]["decode_tok_s"]))
            if comp:
                rows.append(("Llama-1B-shaped decode (tok/s)", o, comp[0]["decode_tok_s"],
                             "HF static+compile", o / comp[0]["decode_tok_s"]))
            if copy:
                floor = copy[0]["gb_s"] * 1e9 / ours[0]["weight_bytes"]
                rows.append(("Llama-1B-shaped decode (tok/s)", o, floor,
                             f"floor ({copy[0]['gb_s']:.0f} GB/s copy)", o / floor))
    if "train" in only:
        ours = run([a.bin, "train", "--steps", str(a.steps)])
        theirs = py(TORCH_TRAIN, 8, 1024, a.steps, 3)
        if ours and theirs:
            rows.append(("GPT-2 small train step 8×1024 (ms, lower is better)", ours[0]["step_ms"],
                         theirs[0]["step_ms"], "PyTorch eager", ours[0]["step_ms"] / theirs[0]["step_ms"]))
    print()
    print("| what | ours | other | other is | ratio ours/other |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]} | {r[4]:.2f} |")


if __name__ == "__main__":
    main()
