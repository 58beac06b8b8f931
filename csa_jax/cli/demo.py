"""``csa-jax demo [--out DIR]``: the synthetic landmark benchmark end to end, in minutes on a CPU.

Writes the benchmark to DIR/data, trains a small CSA on it, re-ranks the test set's first-round
lists and prints the revisited mAP of both rounds; the table also goes to DIR/results.json. The
steps are ``csa_jax.experiments.demo.run``'s.
"""

from __future__ import annotations

import argparse
import time

import jax

from csa_jax.data import synthetic
from csa_jax.evaluation.revisited import PROTOCOLS
from csa_jax.experiments import demo


def format_table(results: dict, K: int) -> str:
  """The demo's table: first round, CSA and their difference, mAP (%) per protocol."""
  lines = [f"{'mAP (%)':<22}{'Easy':>8}{'Medium':>8}{'Hard':>8}"]
  for key, name in (("first_round", "first round (cosine)"), ("csa", f"CSA re-rank (K={K})")):
    r = results[key]
    lines.append(f"{name:<22}" + "".join(f"{r[p]:>8.2f}" for p in PROTOCOLS))
  d = {p: results["csa"][p] - results["first_round"][p] for p in PROTOCOLS}
  lines.append(f"{'CSA - first round':<22}" + "".join(f"{d[p]:>+8.2f}" for p in PROTOCOLS))
  return "\n".join(lines)


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
  return 0
