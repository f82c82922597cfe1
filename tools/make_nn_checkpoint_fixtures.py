#!/usr/bin/env python3
"""Checkpoint interoperability with PyTorch, both directions.

1. Writes a fixture for the Rust test ``tensor-nn/tests/checkpoint_interop.rs``: a small
   PyTorch CNN (the layout of the ``train_digits`` example: conv1, conv2, fc1, fc2, plus a
   BatchNorm to cover buffers) saved with ``safetensors.torch.save_file(model.state_dict())``,
   and an input with the logits PyTorch computes for it (eval mode), in
   ``tensor-nn/tests/fixtures/checkpoint/``. The Rust test loads that file into our model with a
   strict ``load_state_dict`` and must reproduce the logits.
2. With ``--check-ours PATH`` (a checkpoint written by ``train_digits``), loads our file into the
   same PyTorch module with ``load_state_dict(strict=True)`` (dropping the ``optimizer.``
   entries) and prints the test accuracy PyTorch gets with it on the digits split.

Run with a python that has torch and safetensors (never a dependency of the repository):

    $TORCH_PY tools/make_nn_checkpoint_fixtures.py [--check-ours runs/digits/digits.safetensors]
"""

import argparse
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tensor-nn", "tests", "fixtures", "checkpoint")


class DigitsCnn(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16) if bn else None
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        if self.bn is not None:
            x = self.bn(x)
        x = F.relu(x)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def write_fixture():
    torch.manual_seed(0)
    m = DigitsCnn(bn=True).double()
    # Non-trivial running statistics and a few training steps' worth of BN state.
    m.train()
    for _ in range(3):
        m(torch.rand(8, 1, 8, 8, dtype=torch.float64))
    m.eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
    os.makedirs(OUT, exist_ok=True)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(sd, os.path.join(OUT, "torch_cnn.safetensors"))
    with open(os.path.join(OUT, "torch_cnn_io.json"), "w") as f:
        json.dump({"input": {"shape": list(x.shape), "data": x.flatten().tolist()},
                   "logits": {"shape": list(y.shape), "data": y.flatten().tolist()}}, f)
    print("wrote", OUT)


def check_ours(path):
    sd = {k: v for k, v in load_file(path).items() if not k.startswith("optimizer.")}
    m = DigitsCnn()
    m.load_state_dict(sd, strict=True)
    m.eval()
    import csv
    import subprocess
    data = subprocess.run(["bash", os.path.join(ROOT, "scripts", "fetch_digits.sh")],
                          capture_output=True, text=True, check=True).stdout.strip()
    rows = [list(map(float, r)) for r in csv.reader(open(data))]
    x = torch.tensor([r[:64] for r in rows]).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor([int(r[64]) for r in rows])
    with torch.no_grad():
        acc = (m(x).argmax(-1) == y).float().mean().item()
    print(f"loaded {path} into PyTorch with load_state_dict(strict=True): "
          f"accuracy on all 1797 digits = {acc:.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-ours")
    a = ap.parse_args()
    if a.check_ours:
        check_ours(a.check_ours)
    else:
        write_fixture()
