"""Writes tests/fixtures/csa_tiny_original.pth: the reference fixture's weights saved by real torch.

The checkpoint loader is tested against this file without torch installed, so it must be produced
by torch itself, in the original training script's layout {'epoch', 'state_dict'}.
Usage: python tools/make_tiny_pth.py  (needs the optional torch extra).
"""

import collections
import pathlib

import numpy as np
import torch

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"

if __name__ == "__main__":
  ref = np.load(DATA / "csa_tiny_reference.npz")
  sd = collections.OrderedDict(
      (k[len("param/"):], torch.from_numpy(ref[k].copy()))
      for k in ref.files if k.startswith("param/"))
  torch.save({"epoch": 7, "state_dict": sd}, DATA / "csa_tiny_original.pth")
  print("wrote", DATA / "csa_tiny_original.pth", f"torch {torch.__version__}")
  # Storage corner cases: a transposed (non-contiguous) view, a view at an offset, half types.
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  torch.save({"t": base.t(), "offset": base[1:, 2:], "half": base.half()[0],
              "bf16": base.bfloat16()[1], "long": torch.arange(5)}, DATA / "torch_dtypes.pth")
  print("wrote", DATA / "torch_dtypes.pth")
