"""``csa-jax demo [--out DIR]``: the synthetic landmark benchmark end to end, in minutes on a CPU.

Writes the benchmark to DIR/data, trains a small CSA on it, re-ranks the test set's first-round
lists and prints the revisited mAP of both rounds; the table also goes to DIR/results.json. The
steps are ``csa_jax.experiments.demo.run``'s.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from csa_jax.data import synthetic
from csa_jax.evaluation.revisited import PROTOCOLS
from csa_jax.experiments import demo


def format_table(results: dict, K: int) -> str:
  """The demo's table: first round, CSA and their difference, mAP (%) per protocol; with a
  bfloat16 re-ranking in ``results``, its row and its difference to float32 below."""
  w = 24
  lines = [f"{'mAP (%)':<{w}}{'Easy':>8}{'Medium':>8}{'Hard':>8}"]
  rows = [("first_round", "first round (cosine)"), ("csa", f"CSA re-rank (K={K})")]
  diffs = [("CSA - first round", "csa", "first_round")]
  if "csa_bf16" in results:
    rows.append(("csa_bf16", "CSA re-rank, bfloat16"))
    diffs.append(("bfloat16 - float32", "csa_bf16", "csa"))
  for key, name in rows:
    lines.append(f"{name:<{w}}" + "".join(f"{results[key][p]:>8.2f}" for p in PROTOCOLS))
  for name, a, b in diffs:
    lines.append(f"{name:<{w}}" + "".join(f"{results[a][p] - results[b][p]:>+8.2f}"
                                          for p in PROTOCOLS))
  return "\n".join(lines)


def next_steps(out: str, K: int) -> str:
  """Where the demo's outputs are and the commands that take them further (``K``: the demo's
  re-ranking depth, which the eval command must repeat to give the same table)."""
  data, train = os.path.join(out, "data"), os.path.join(out, "train")
  return "\n".join([
      f"results: {os.path.join(out, 'results.json')}; trained model and curves: {train}",
      "next:",
      f"  csa-jax eval --data {data} --features {synthetic.FEATURES} --model {train} --K {K}"
      "    # the same table from the saved model",
      f"  csa-jax train --config synthetic --config.data.root={data} --workdir "
      "my_run    # train it yourself",
      "  docs/data.md: the layout to put your own descriptors in"])


def main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(prog="csa-jax demo", description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="csa_demo", help="output directory (default: ./csa_demo)")
  ap.add_argument("--size", choices=sorted(demo.SIZES), default="default",
                  help="'tiny' runs in seconds and shows nothing; 'default' is the real demo")
  ap.add_argument("--seed", type=int, default=0, help="benchmark and training seed")
  args = ap.parse_args(argv)
  t0 = time.time()
  results = demo.run(args.out, args.size, args.seed, command_argv=["csa-jax", "demo", *argv])
  print(f"synthetic landmark benchmark ({synthetic.DATASET}, seed {args.seed}): "
        f"{time.time() - t0:.0f} s on {jax.devices()[0].platform}")
  print(format_table(results, demo.SIZES[args.size][2]))
  print(next_steps(args.out, demo.SIZES[args.size][2]))
  return 0
