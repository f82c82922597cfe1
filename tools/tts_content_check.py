#!/usr/bin/env python3
"""A listen-free check that text_to_audio says the sentence it was given.

For every held-out sentence of one voice, synthesise it with a trained text_to_audio
checkpoint, then compare the synthesis with the recordings of *all* held-out sentences of
that voice by a DTW-aligned log-mel distance. If the model speaks the text, the recording of
the same sentence should be the nearest (top-1) or near the top (rank); a model that only
makes speech-like sound ranks the right recording at chance (top-1 = 1/N, mean rank ≈ N/2).
The same ranking is printed for the codec's own reconstructions (--codec-bin), the ceiling
the synthesis could reach.

    python3 tools/tts_content_check.py --bin target/release/examples/text_to_audio \
        --checkpoint runs/tts --heldout "$D/heldout" --voice en-gb

Needs numpy only; torch is not used.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2, f"{path}: 16-bit PCM expected"
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        ch = w.getnchannels()
        return x.reshape(-1, ch).mean(axis=1) / 32768.0, w.getframerate()


def mel_filterbank(sr, n_fft, n_mels):
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def log_mel(x, sr, n_fft=512, hop=160, n_mels=40):
    win = np.hanning(n_fft + 1)[:-1]
    pad = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    n = 1 + (len(pad) - n_fft) // hop
    frames = np.stack([pad[i * hop : i * hop + n_fft] * win for i in range(n)])
    mag = np.abs(np.fft.rfft(frames, axis=1))
    m = np.log(np.maximum(mel_filterbank(sr, n_fft, n_mels) @ mag.T, 1e-5)).T
    # Per-utterance mean removal: level and voice timbre matter less than content.
    return m - m.mean(axis=0, keepdims=True)


def dtw_distance(a, b):
    """Accumulated frame distance along the best monotone alignment of a and b, divided by
    len(a) + len(b). Computed one anti-diagonal at a time (each needs the two before it)."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        best = np.minimum(np.minimum(acc[i - 1, j - 1], acc[i - 1, j]), acc[i, j - 1])
        acc[i, j] = best + cost[i - 1, j - 1]
    return acc[n, m] / (n + m)


def ranks(dist):
    """Rank (1 = nearest) of the matching recording for each row of dist[synth, recording]."""
    order = np.argsort(dist, axis=1)
    return np.array([int(np.where(order[i] == i)[0][0]) + 1 for i in range(len(dist))])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the text_to_audio binary")
    ap.add_argument("--checkpoint", required=True, help="text_to_audio's training folder")
    ap.add_argument("--heldout", required=True,
                    help="the corpus's heldout/ folder (or train/, to check memorisation)")
    ap.add_argument("--voice", default="en-gb")
    ap.add_argument("--codec-bin", help="the codec binary: also rank its reconstructions")
    ap.add_argument("--kbps", default="1", help="the codec's bitrate for --codec-bin")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--max-sentences", type=int, default=0,
                    help="use only the first N sentences (0 = all; DTW is quadratic in N)")
    a = ap.parse_args()

    rows = []
    with open(os.path.join(a.heldout, "metadata.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3 and parts[1] == a.voice:
                rows.append((parts[0], parts[2]))
    if a.max_sentences:
        rows = rows[: a.max_sentences]
    if len(rows) < 2:
        sys.exit(f"fewer than 2 held-out clips of voice {a.voice!r}")
    recs = []
    for name, _ in rows:
        x, sr = read_wav(os.path.join(a.heldout, name))
        recs.append(log_mel(x, sr))

    def rank_outputs(make):
        feats = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, text) in enumerate(rows):
                out = os.path.join(tmp, f"{i}.wav")
                make(name, text, out)
                x, sr = read_wav(out)
                feats.append(log_mel(x, sr))
        dist = np.array([[dtw_distance(s, r) for r in recs] for s in feats])
        return ranks(dist)

    def synth(_name, text, out):
        subprocess.run([a.bin, "--text", text, "--out", out, "--checkpoint", a.checkpoint,
                        "--voice", a.voice, "--seed", a.seed],
                       check=True, capture_output=True)

    systems = [("text_to_audio", rank_outputs(synth))]
    if a.codec_bin:
        codec_dir = a.checkpoint

        def recon(name, _text, out):
            codes = out + ".codes"
            src = os.path.join(a.heldout, name)
            subprocess.run([a.codec_bin, "encode", src, codes, "--checkpoint", codec_dir,
                            "--kbps", a.kbps], check=True, capture_output=True)
            subprocess.run([a.codec_bin, "decode", codes, out, "--checkpoint", codec_dir],
                           check=True, capture_output=True)

        systems.append((f"codec at {a.kbps} kbit/s", rank_outputs(recon)))
    n = len(rows)
    print(f"voice {a.voice}: {n} held-out sentences; chance: top-1 {1 / n:.3f}, "
          f"mean rank {(n + 1) / 2:.1f}\n")
    print("| output | top-1 | top-5 | mean rank of the right recording |")
    print("|---|---:|---:|---:|")
    for label, r in systems:
        print(f"| {label} | {np.mean(r == 1):.3f} | {np.mean(r <= 5):.3f} | {r.mean():.1f} |")


if __name__ == "__main__":
    main()
