"""``csa-jax convert SRC DST``: a trained model from one weights format to another.

  csa-jax convert SRC DST [--heads H]

SRC is anything ``--model`` takes (an original CSA .pth, a csa_jax .npz or .safetensors export, a
training workdir); DST's suffix picks the format: .safetensors or .npz (the original state_dict's
names with the model's config recorded) or .pth (what the original training saves, with the head
count; needs the torch extra). The weights go across bit for bit. DST is checked before SRC is
read; it may be a new path or an export csa_jax wrote (replaced), never an existing .pth or a
file csa_jax did not write, and never SRC itself (same path, a symlink or a hard link).
"""

from __future__ import annotations

import argparse
import sys

import jax

from csa_jax.cli.rerank_flags import check_positive
from csa_jax.errors import fail
from csa_jax.interop.convert import WEIGHT_SUFFIXES, convert_model


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="csa-jax convert", description=__doc__.split("\n\n")[0])
  p.add_argument("src", help="a model: original .pth, .npz or .safetensors export, or a workdir")
  p.add_argument("dst", help=f"the output, ending in {', '.join(WEIGHT_SUFFIXES)}")
  p.add_argument("--heads", type=int, default=None,
                 help="attention heads, for a .pth or .safetensors that does not record them")
  return p


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  check_positive(args, ("heads",))
  try:
    model = convert_model(args.src, args.dst, heads=args.heads)
  except ImportError as e:  # a .pth target without torch: say which extra, in one line
    raise fail(args.dst, "dst", "a .npz or .safetensors path, or the torch extra for .pth",
               str(e).split(";")[0]) from None
  n = sum(int(v.size) for v in jax.tree_util.tree_leaves(model.params))
  c = model.cfg
  print(f"csa-jax convert: wrote {args.dst} ({n:,} float32 parameters; anchors {c.anchors}, "
        f"dim {c.dim}, depth {c.depth}, heads {c.heads})", file=sys.stderr)
  return 0

