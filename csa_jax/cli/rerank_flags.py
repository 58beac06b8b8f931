"""The re-ranking flags ``csa-jax eval`` and ``csa-jax rerank`` share, and their check."""

from __future__ import annotations

import argparse

from csa_jax import configs
from csa_jax.retrieval.search import SCORE_DTYPES


def add_rerank_flags(p: argparse.ArgumentParser) -> None:
  """--heads, --L, --batch-size, --search-dtype and --block: how a model re-ranks a search."""
  p.add_argument("--heads", type=int, default=None,
                 help="attention heads of a .pth that does not record them (default: the "
                 "recorded count, else 12 with a warning)")
  p.add_argument("--L", type=int, default=None, help="anchors (default: the model's)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="queries per re-ranking call (default: sized to the device's free memory; "
                 "8 per device on CPU)")
  p.add_argument("--search-dtype", choices=SCORE_DTYPES, default="float32",
                 help="first-round scores: float32, or bfloat16 inputs (float32 accumulation)")
  p.add_argument("--block", type=int, default=None, help="db rows per search step")


def check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
  """One line (exit 2) for the first of ``names`` (argparse dests) that is set and below 1.

  The argparse side of ``configs.check_positive``, the one check: dests become flag names.
  """
  for name in names:
    configs.check_positive("--" + name.replace("_", "-"), getattr(args, name))
