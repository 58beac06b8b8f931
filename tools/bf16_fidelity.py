"""bfloat16 against float32 re-ranking: the revisited mAP of both, same model, same first round.

  csa-jax demo --out D                      # trains the demo's model (or any finished run)
  python tools/bf16_fidelity.py --demo D [--ks 128,1024] [--out bf16_fidelity.json]

Re-ranks the demo's test set with the model D/train (a workdir, a .npz export or an original
.pth: ``--model``) once with float32 matmuls and once with bfloat16 ones (float32 accumulation,
``ModelConfig.dtype``), at each K, and prints the Easy/Medium/Hard mAP of both and their
difference. The first round is the same float32 search for both, so the difference is the
re-ranker's precision alone. K beyond the demo's own 128 re-ranks deeper lists than the model was
trained on: what counts here is bfloat16's agreement with float32, not the mAP itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from csa_jax.data import ground_truth, synthetic
from csa_jax.evaluation.evaluate import evaluate, mean_ap_percent
from csa_jax.interop.export import load_model

BATCH = 16


def fidelity(model, q_QxC, db_NxC, gnd, ks) -> list[dict]:
  """mAP (%) of float32 and bfloat16 re-ranking at each K, and bf16 - f32 per protocol."""
  rows = []
  for k in ks:
    k = min(k, len(db_NxC))
    maps = {}
    for dtype in ("float32", "bfloat16"):
      res = evaluate(q_QxC, db_NxC, gnd, model=model._replace(cfg=model.cfg.replace(dtype=dtype)),
                     K=k, batch_size=BATCH)
      maps[dtype] = mean_ap_percent(res["csa"])
      maps["first_round"] = mean_ap_percent(res["first_round"])
    diff = {p: round(maps["bfloat16"][p] - maps["float32"][p], 2) for p in maps["float32"]}
    rows.append({"K": k, **maps, "bf16_minus_f32": diff,
                 "max_abs_diff": max(abs(v) for v in diff.values())})
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--demo", required=True, help="a `csa-jax demo --out` directory")
  ap.add_argument("--model", default=None, help="default: DEMO/train")
  ap.add_argument("--ks", default="128,1024", help="comma-separated K values")
  ap.add_argument("--out", default="bf16_fidelity.json")
  a = ap.parse_args(argv)
  data = os.path.join(a.demo, "data")
  q, db, gnd = ground_truth.load_test_set(
      os.path.join(data, "test", synthetic.DATASET, f"{synthetic.FEATURES}.npz"),
      os.path.join(data, "annotations", synthetic.DATASET, f"gnd_{synthetic.DATASET}.json"))
  model = load_model(a.model or os.path.join(a.demo, "train"))
  rows = fidelity(model, q, db, gnd, [int(k) for k in a.ks.split(",")])
  print(f"{len(q)} queries, {len(db)} images; mAP (%) Easy / Medium / Hard")
  for r in rows:
    for name in ("first_round", "float32", "bfloat16"):
      print(f"K={r['K']:<5} {name:<12}" + "".join(f"{v:>8.2f}" for v in r[name].values()))
    print(f"K={r['K']:<5} {'bf16 - f32':<12}"
          + "".join(f"{v:>+8.2f}" for v in r["bf16_minus_f32"].values()))
  with open(a.out, "w") as f:
    json.dump({"command": " ".join(sys.argv), "queries": len(q), "db": len(db), "rows": rows}, f,
              indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
