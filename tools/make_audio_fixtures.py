#!/usr/bin/env python3
"""Write the PyTorch/torchaudio parity fixtures of ``tensor_audio::spectral`` to
``tensor-audio/tests/fixtures/spectral/`` (read by ``tensor-audio/tests/spectral.rs``).

References: ``torch.stft`` / ``torch.istft`` (``return_complex=True``, viewed as real),
``torchaudio.functional.melscale_fbanks`` and ``torchaudio.transforms.MelSpectrogram``.
Gradients are torch autograd's, of ``sum(output * weights)`` with fixed random weights.

Files (safetensors; every case's settings are in the file's ``__metadata__`` under the case
name, as ``key=value`` pairs separated by spaces):

* ``stft.safetensors`` -- per case ``C``: ``C.x`` (a chirp plus noise, f64), ``C.spec``
  (stft), ``C.gw`` (loss weights, spec's shape), ``C.dx`` (d sum(spec*gw) / dx);
  ``C.spec_in`` (a spectrum to invert: ``spec`` plus noise, so it is not a consistent
  STFT), and per requested length ``L`` (``same``, ``short``, ``long``; ``none`` is torch's
  default): ``C.L.y`` (istft), ``C.L.gy`` (weights), ``C.L.dspec`` (d sum(y*gy) / d spec_in).
* ``mel.safetensors`` -- ``fb.<scale>.<norm>.<n>`` filterbanks ``[n_freqs, n_mels]`` computed
  in float64 (torch's default dtype switched to float64 while building them); per mel case
  ``M``: ``M.x`` (f64 signal), ``M.mel32`` / ``M.logmel32`` (torchaudio in float32, the
  transform built with torch's default float32 dtype as users run it, on ``x`` cast to f32),
  ``M.mel64`` / ``M.logmel64`` (the same in float64), ``M.gw`` and ``M.dx`` (d
  sum(logmel64*gw) / dx), where ``logmel = log(clamp(mel, min=EPS))``.

Everything runs on the CPU, single-threaded, from fixed seeds, so re-running gives the same
files. Files not written by this script are removed from the folder.

torchaudio: the wheel that pip offers may be built against another CUDA than the installed
torch, and its import-time check then refuses to load. ``melscale_fbanks`` and
``MelSpectrogram`` are pure Python over ``torch.stft``, so the check is skipped (the CUDA
version is hidden from it during the import only); nothing CUDA-specific is used.

How to run (from the repository root, with a python that has torch, torchaudio and
safetensors; none of them is a dependency of the repository and CI never runs this script):

    python tools/make_audio_fixtures.py

Never hand-edit the fixtures: change this script and re-run it, then
``cargo test -p tensor-audio --test spectral``.
"""

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

_cuda = torch.version.cuda
torch.version.cuda = None  # see the docstring: skip torchaudio's CUDA version check
import torchaudio  # noqa: E402
import torchaudio.functional as AF  # noqa: E402
import torchaudio.transforms as AT  # noqa: E402

torch.version.cuda = _cuda

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tensor-audio" / "tests" / "fixtures" / "spectral"
EPS = 1e-5
F64 = torch.float64

torch.set_num_threads(1)


def chirp(batch, n, sr, seed):
    """A linear chirp (different range per row) plus white noise, f64 [batch, n]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=F64) / sr
    dur = n / sr
    rows = []
    for b in range(batch):
        f0, f1 = 80.0 + 40.0 * b, 0.4 * sr - 500.0 * b
        phase = 2 * math.pi * (f0 * t + (f1 - f0) * t * t / (2 * dur))
        rows.append(0.5 * torch.sin(phase) + 0.05 * torch.randn(n, generator=g, dtype=F64))
    return torch.stack(rows)


def make_window(kind, win_length, dtype):
    if kind == "hann":
        return torch.hann_window(win_length, periodic=True, dtype=dtype)
    if kind == "hamming":
        return torch.hamming_window(win_length, periodic=True, dtype=dtype)
    return torch.ones(win_length, dtype=dtype)


def meta(**kw):
    def fmt(v):
        if isinstance(v, bool):
            return "1" if v else "0"
        return str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in kw.items())


# name: (n_fft, hop, win_length, window, center, normalized, signal shape)
STFT_CASES = {
    "hann_center": (32, 8, 32, "hann", True, False, (2, 200)),
    "hamming_short_win_norm": (50, 12, 40, "hamming", True, True, (2, 157)),
    "rect_odd_nocenter": (33, 10, 33, "rect", False, False, (201,)),
    "hann_batch_dims": (16, 5, 12, "hann", True, False, (2, 2, 61)),
}


def stft_fixtures(tensors, metadata):
    for i, (name, (n_fft, hop, win, kind, center, normalized, shape)) in enumerate(
        STFT_CASES.items()
    ):
        g = torch.Generator().manual_seed(100 + i)
        lead, n = shape[:-1], shape[-1]
        b = math.prod(lead)
        x = chirp(b, n, 16000, 10 + i).reshape(shape).clone().requires_grad_(True)
        w = make_window(kind, win, F64)
        kw = dict(
            n_fft=n_fft,
            hop_length=hop,
            win_length=win,
            window=w,
            center=center,
            normalized=normalized,
            pad_mode="reflect",
            onesided=True,
        )
        flat = x.reshape(b, n)
        spec = torch.view_as_real(torch.stft(flat, return_complex=True, **kw))
        spec = spec.reshape(*lead, *spec.shape[1:])
        gw = torch.randn(spec.shape, generator=g, dtype=F64)
        (dx,) = torch.autograd.grad((spec * gw).sum(), x)
        tensors[f"{name}.x"] = x.detach()
        tensors[f"{name}.spec"] = spec.detach()
        tensors[f"{name}.gw"] = gw
        tensors[f"{name}.dx"] = dx
        metadata[name] = meta(
            n_fft=n_fft,
            hop=hop,
            win=win,
            window=kind,
            center=center,
            normalized=normalized,
        )

        spec_in = (spec.detach() + 0.1 * torch.randn(spec.shape, generator=g, dtype=F64))
        spec_in = spec_in.requires_grad_(True)
        tensors[f"{name}.spec_in"] = spec_in.detach()
        refused = []
        for label, length in [("none", None), ("same", n), ("short", n - 5), ("long", n + 7)]:
            z = torch.view_as_complex(spec_in.reshape(b, *spec_in.shape[len(lead):]))
            kw_i = dict(kw)
            del kw_i["pad_mode"]
            try:
                y = torch.istft(z, length=length, return_complex=False, **kw_i)
            except RuntimeError as e:
                # The window overlap vanishes in the kept range (NOLA): ours must refuse too.
                assert "window overlap add min" in str(e), e
                refused.append(label)
                continue
            y = y.reshape(*lead, y.shape[-1])
            gy = torch.randn(y.shape, generator=g, dtype=F64)
            (dspec,) = torch.autograd.grad((y * gy).sum(), spec_in)
            tensors[f"{name}.{label}.y"] = y.detach()
            tensors[f"{name}.{label}.gy"] = gy
            tensors[f"{name}.{label}.dspec"] = dspec
        metadata[name] += f" signal_len={n} istft_refused={','.join(refused) or '-'}"


# (scale, norm, n_freqs, f_min, f_max, n_mels, sample_rate)
FBANKS = [
    ("htk", "none", 129, 0.0, 8000.0, 40, 16000),
    ("htk", "slaney", 129, 0.0, 8000.0, 40, 16000),
    ("slaney", "none", 129, 30.0, 11000.0, 32, 24000),
    ("slaney", "slaney", 129, 30.0, 11000.0, 32, 24000),
    ("htk", "none", 65, 50.0, 4000.0, 16, 16000),
]

# name: MelSpectrogram kwargs, signal shape
MEL_CASES = {
    "sr16k_nfft1024_hop256_mels80": (
        dict(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=80),
        (2, 2400),
    ),
    "sr24k_nfft1024_hop256_mels100": (
        dict(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100),
        (1, 3000),
    ),
    "sr24k_slaney_win400_power1": (
        dict(
            sample_rate=24000,
            n_fft=512,
            win_length=400,
            hop_length=128,
            n_mels=64,
            f_min=30.0,
            f_max=11000.0,
            power=1.0,
            norm="slaney",
            mel_scale="slaney",
        ),
        (2, 1601),
    ),
    "torchaudio_defaults": (dict(), (1, 1200)),
}


def mel_fixtures(tensors, metadata):
    torch.set_default_dtype(F64)
    for scale, norm, n_freqs, f_min, f_max, n_mels, sr in FBANKS:
        fb = AF.melscale_fbanks(
            n_freqs, f_min, f_max, n_mels, sr, norm=None if norm == "none" else norm, mel_scale=scale
        )
        name = f"fb.{scale}.{norm}.{n_freqs}"
        tensors[name] = fb
        metadata[name] = meta(
            n_freqs=n_freqs, f_min=f_min, f_max=f_max, n_mels=n_mels, sample_rate=sr
        )
    torch.set_default_dtype(torch.float32)

    for i, (name, (kw, shape)) in enumerate(MEL_CASES.items()):
        g = torch.Generator().manual_seed(200 + i)
        sr = kw.get("sample_rate", 16000)
        x = chirp(shape[0], shape[1], sr, 30 + i)
        tensors[f"{name}.x"] = x
        # float32, as users run torchaudio.
        t32 = AT.MelSpectrogram(**kw)
        mel32 = t32(x.float())
        tensors[f"{name}.mel32"] = mel32
        tensors[f"{name}.logmel32"] = torch.log(torch.clamp(mel32, min=EPS))
        # float64 throughout (filterbank included) for forward and backward at tight tolerances.
        torch.set_default_dtype(F64)
        t64 = AT.MelSpectrogram(**kw)
        torch.set_default_dtype(torch.float32)
        x64 = x.clone().requires_grad_(True)
        mel64 = t64(x64)
        logmel64 = torch.log(torch.clamp(mel64, min=EPS))
        gw = torch.randn(logmel64.shape, generator=g, dtype=F64)
        (dx,) = torch.autograd.grad((logmel64 * gw).sum(), x64)
        tensors[f"{name}.mel64"] = mel64.detach()
        tensors[f"{name}.logmel64"] = logmel64.detach()
        tensors[f"{name}.gw"] = gw
        tensors[f"{name}.dx"] = dx
        m = t32
        metadata[name] = meta(
            sample_rate=m.sample_rate,
            n_fft=m.n_fft,
            win_length=m.win_length,
            hop_length=m.hop_length,
            f_min=m.f_min,
            f_max=m.f_max,
            n_mels=m.n_mels,
            power=m.power,
            norm=m.mel_scale.norm or "none",
            mel_scale=m.mel_scale.mel_scale,
            eps=EPS,
        )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, build in [("stft.safetensors", stft_fixtures), ("mel.safetensors", mel_fixtures)]:
        tensors, metadata = {}, {}
        build(tensors, metadata)
        metadata["generator"] = f"torch {torch.__version__}, torchaudio {torchaudio.__version__}"
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(OUT / fname), metadata=metadata)
        written.append(fname)
        print(f"wrote {fname}: {len(tensors)} tensors, {(OUT / fname).stat().st_size} bytes")
    for p in OUT.iterdir():
        if p.name not in written:
            p.unlink()


if __name__ == "__main__":
    main()
