#!/usr/bin/env python3
"""Quantized SmolLM2 on the CPU, side by side: llama.cpp (through llama-cpp-python) and ours.

For each GGUF type (default: the shipped Q4_1 file, plus Q8_0, Q4_0 and Q4_K_M made from it
by our `quantize` example and cached next to it), both engines run the same job on the same
file with 2 threads:

* prefill: one forward pass over a 128-token prompt;
* decode: greedy generation with EOS ignored until 128 tokens exist; the first comes from the
  prefill, so decode tok/s = 127 / (time of the 127 single-token steps), as our `generate`
  example counts it;
* peak RSS of the process, read by the parent with os.wait4 (both engines in their own
  subprocess; llama.cpp's includes the Python interpreter and llama-cpp-python, ~25 MB).

The prompt is token ids, not text: a fixed English paragraph tokenized by llama.cpp's
tokenizer (BOS as the model's metadata says), repeated or cut to exactly 128 ids, given to
llama.cpp's `eval` and to ours with `generate --prompt-ids`, so both see the very same tokens.
Both run one untimed 1-token warm-up first (llama.cpp's weights are mmapped and fault in on
first use; our `generate --warmup` does the same), and n_ctx is 512 for llama.cpp while our
KV cache holds prompt + generated tokens.

Rounds alternate which engine goes first; the table shows medians, and ratios are ours /
llama.cpp (higher is better for tok/s, lower for RSS).

Run it from the repository root with a python3 that has llama-cpp-python, built without
ggml's AMX kernels (they crash on this CPU, and GGML_NATIVE=ON turns them back on):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
      -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \\
      -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" python3 -m pip install llama-cpp-python==0.3.36

    python3 benches/quant_vs_llamacpp.py --rounds 5
    python3 benches/quant_vs_llamacpp.py --rounds 1 --types Q4_1 --bin target/release/examples/generate

Without --bin the script builds the `generate` and `quantize` examples with cargo (release;
CARGO_TARGET_DIR is honoured). The machine should be idle: the script prints `uptime` and
warns when the 1-minute load is above 0.5.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TYPES = ["Q4_1", "Q8_0", "Q4_0", "Q4_K_M"]
PARAGRAPH = (
    "The river town woke slowly on winter mornings. Before the sun rose over the hills, the "
    "baker lit his ovens and the smell of bread drifted along the narrow streets. Children "
    "walked to school in small groups, their breath white in the cold air, while their parents "
    "opened shops, swept the steps and talked about the weather. Most people in the town had "
    "lived there all their lives, and they knew each other well. They knew who kept the best "
    "garden, who told the longest stories, and who could be trusted to repair a broken clock."
)


def default_model():
    cache = os.environ.get("TENSOR_ENGINE_CACHE") or os.path.expanduser("~/.cache/tensor-engine")
    return Path(cache) / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The llama.cpp side runs in a child process (this script with --llamacpp-child), so that its
# memory is its own and measured like ours.
# --------------------------------------------------------------------------------------------


def llamacpp_child(model, ids, n_gen, threads):
    import ctypes

    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=model,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=512,
        n_batch=512,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))

    # Warm-up: fault the mmapped weights in, then forget the cache.
    llm.eval(ids[:1])
    llm.reset()

    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    tok = int(np.argmax(last_logits()))
    out = [tok]
    t2 = time.perf_counter()
    while len(out) < n_gen:
        llm.eval([tok])
        tok = int(np.argmax(last_logits()))
        out.append(tok)
    t3 = time.perf_counter()
    steps = n_gen - 1
    text = llm.detokenize(out).decode("utf-8", errors="replace")
    print(
        json.dumps(
            {
                "prompt_tokens": len(ids),
                "generated_tokens": len(out),
                "prefill_tok_s": len(ids) / (t1 - t0),
                "decode_tok_s": steps / (t3 - t2) if steps > 0 else None,
                "text": text,
            }
        )
    )


def run_measured(cmd, env=None):
    """Run cmd, returning (exit code, stdout, stderr, peak RSS in MB from wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in KiB on Linux.
        return p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), usage.ru_maxrss / 1024


def json_line(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def run_llamacpp(model, ids, args):
    cmd = [sys.executable, __file__, "--llamacpp-child", str(model), ",".join(map(str, ids)),
           str(args.gen_tokens), str(args.threads)]
    rc, out, err, rss = run_measured(cmd)
    if rc != 0:
        raise RuntimeError(f"llama.cpp on {model.name} failed ({rc}):\n{err[-2000:]}")
    r = json_line(out)
    r["peak_rss_mb"] = rss
    return r


def run_ours(model, ids, args, gen_bin):
    cmd = [str(gen_bin), "--model", str(model), "--prompt-ids", ",".join(map(str, ids)),
           "--max-tokens", str(args.gen_tokens), "--ignore-eos", "--temperature", "0",
           "--threads", str(args.threads), "--warmup", "--stats-json"]
    rc, out, err, rss = run_measured(cmd)
    if rc != 0:
        raise RuntimeError(f"ours on {model.name} failed ({rc}):\n{err[-2000:]}")
    r = json_line(err)
    r["text"] = out.rstrip("\n")
    r["peak_rss_mb_self"] = r.get("peak_rss_mb")
    r["peak_rss_mb"] = rss
    return r


# --------------------------------------------------------------------------------------------
# Setup: binaries, model files, prompt ids, machine checks
# --------------------------------------------------------------------------------------------


def build_examples():
    cargo = shutil.which("cargo")
    if cargo is None:
        sys.exit("cargo not found: pass --bin path/to/generate (and --quantize-bin)")
    log("building the generate and quantize examples (release) ...")
    subprocess.run([cargo, "build", "--release", "-p", "tensor-examples", "--example", "generate",
                    "--example", "quantize"], cwd=REPO, check=True)
    meta = subprocess.run([cargo, "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                          check=True, capture_output=True, text=True)
    target = Path(json.loads(meta.stdout)["target_directory"])
    return target / "release/examples/generate", target / "release/examples/quantize"


def model_file(base, ty, quantize_bin):
    """The GGUF of type ty: the base file itself, or one made from it by our quantizer."""
    src_type = base.stem.rsplit(".", 1)[-1]
    if ty == src_type:
        return base
    path = base.with_name(f"{base.stem}.to-{ty}.gguf")
    if not path.is_file():
        log(f"making {path.name} with {quantize_bin.name} ...")
        subprocess.run([str(quantize_bin), str(base), str(path), ty], check=True)
    return path


def prompt_ids(model, n):
    code = (
        "import json, sys, llama_cpp\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
        "print(json.dumps(llm.tokenize(sys.argv[2].encode(), add_bos=True, special=False)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model), PARAGRAPH], check=True,
                         capture_output=True, text=True).stdout
    ids = json.loads(out.strip().splitlines()[-1])
    if not ids:
        sys.exit("the paragraph tokenized to nothing")
    return [ids[i % len(ids)] for i in range(n)]


def check_machine():
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {up}")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"WARNING: the 1-minute load is {load1:.2f} (> 0.5): the machine is not idle, "
              "timings will be noisy and low")
    info = subprocess.run([sys.executable, "-c",
                           "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
                          capture_output=True, text=True)
    if info.returncode != 0:
        sys.exit(f"cannot import llama_cpp with {sys.executable}:\n{info.stderr[-1000:]}")
    print(f"llama.cpp system info: {info.stdout.strip()}")
    if "AMX_INT8" in info.stdout:
        print("WARNING: this llama.cpp build has ggml's AMX kernels (AMX_INT8), which crash or "
              "misbehave on this CPU; rebuild it as this script's docstring says")


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(ours, theirs):
    return None if not ours or not theirs else ours / theirs


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--llamacpp-child":
        model, ids, n_gen, threads = sys.argv[2:6]
        llamacpp_child(model, [int(t) for t in ids.split(",")], int(n_gen), int(threads))
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model(),
                    help="the base GGUF (default: the cached SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES),
                    help="comma-separated types; the base file's own type uses it as is")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--bin", type=Path, help="our generate binary (default: built with cargo)")
    ap.add_argument("--quantize-bin", type=Path,
                    help="our quantize binary (default: beside --bin, or built with cargo)")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    if args.rounds < 1 or args.threads < 1 or args.prompt_tokens < 1 or args.gen_tokens < 2:
        sys.exit("--rounds and --threads must be >= 1, --prompt-tokens >= 1, --gen-tokens >= 2")
    if args.prompt_tokens + args.gen_tokens > 512:
        sys.exit("prompt + generated tokens must fit llama.cpp's n_ctx of 512")
    if not args.model.is_file():
        sys.exit(f"{args.model}: no such file (scripts/fetch-models.sh smollm2 fetches it)")

    gen_bin, quantize_bin = args.bin, args.quantize_bin
    if gen_bin is None:
        gen_bin, built_quantize = build_examples()
        quantize_bin = quantize_bin or built_quantize
    quantize_bin = quantize_bin or gen_bin.with_name("quantize")
    for b in (gen_bin, quantize_bin):
        if not Path(b).is_file():
            sys.exit(f"{b}: no such binary")

    check_machine()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    files = {}
    for ty in types:
        try:
            files[ty] = model_file(args.model, ty, quantize_bin)
        except subprocess.CalledProcessError as e:
            print(f"WARNING: skipping {ty}: our quantize failed ({e.returncode})")
    ids = prompt_ids(args.model, args.prompt_tokens)
    print(f"prompt: {len(ids)} token ids (first 8: {ids[:8]}), {args.gen_tokens} generated, "
          f"{args.threads} threads, {args.rounds} round(s)")

    results = {ty: {"llama.cpp": [], "ours": []} for ty in files}
    for r in range(args.rounds):
        for ty, path in files.items():
            engines = [("llama.cpp", lambda: run_llamacpp(path, ids, args)),
                       ("ours", lambda: run_ours(path, ids, args, gen_bin))]
            if r % 2 == 1:
                engines.reverse()
            for name, fn in engines:
                m = fn()
                results[ty][name].append(m)
                log(f"round {r + 1} {ty:7} {name:9} prefill {fmt(m['prefill_tok_s'])} tok/s, "
                    f"decode {fmt(m['decode_tok_s'])} tok/s, peak RSS {fmt(m['peak_rss_mb'], 0)} MB")

    def med(ty, engine, key):
        vals = [m[key] for m in results[ty][engine] if m.get(key) is not None]
        return statistics.median(vals) if vals else None

    head = ("type", "llama.cpp prefill", "ours prefill", "ratio", "llama.cpp decode",
            "ours decode", "ratio", "RSS llama.cpp", "RSS ours", "ratio")
    rows = []
    for ty in files:
        lp, op = med(ty, "llama.cpp", "prefill_tok_s"), med(ty, "ours", "prefill_tok_s")
        ld, od = med(ty, "llama.cpp", "decode_tok_s"), med(ty, "ours", "decode_tok_s")
        lr, orr = med(ty, "llama.cpp", "peak_rss_mb"), med(ty, "ours", "peak_rss_mb")
        rows.append((ty, fmt(lp), fmt(op), fmt(ratio(op, lp), 2), fmt(ld), fmt(od),
                     fmt(ratio(od, ld), 2), fmt(lr, 0), fmt(orr, 0), fmt(ratio(orr, lr), 2)))
    print(f"\nmedians of {args.rounds} round(s); tok/s, RSS in MB; ratio = ours / llama.cpp")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    # Greedy decoding on the same file and ids: the texts should agree for a while (float
    # summation order differs, so near-ties may flip eventually).
    for ty in files:
        a, b = results[ty]["llama.cpp"][0]["text"], results[ty]["ours"][0]["text"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"{ty}: greedy texts agree on their first {same} characters "
              f"(llama.cpp: {a[:60]!r} / ours: {b[:60]!r})")
    if args.json:
        args.json.write_text(json.dumps({"ids": ids, "results": results}, indent=1))


if __name__ == "__main__":
    main()
