"""The in-training evaluator on a tiny synthetic benchmark: its numbers are the routine's.

Called directly and from inside a training run, the evaluator must report exactly what a direct
``evaluation.evaluate`` call with the same parameters gives (rounded by ``mean_ap_percent``).
"""

import jax
import pytest

from csa_jax import configs
from csa_jax.core.config import Model, ModelConfig
from csa_jax.core.forward import init_params
from csa_jax.data import ground_truth, synthetic
from csa_jax.evaluation.evaluate import evaluate, mean_ap_percent
from csa_jax.experiments import demo
from csa_jax.train import periodic_eval

CFG = ModelConfig(anchors=16, dim=16, depth=1, heads=2, drop=0.0, attn_drop=0.0, drop_path=0.0)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  return str(root), synthetic.write_benchmark(root, demo.SIZES["tiny"][0])


def _config(root: str, K: int):
  overrides = [("data.root", root), ("data.cache_dir", f"{root}/neighbors"), ("data.K", "16"),
               ("eval.K", str(K)), ("eval.batch", "4"), ("eval.every_epochs", "1"),
               ("train.epochs", "1"), ("train.global_batch", "16"), ("log.every_steps", "2")]
  overrides += [(f"model.{k}", str(getattr(CFG, k)))
                for k in ("anchors", "dim", "depth", "heads", "drop", "attn_drop", "drop_path")]
  return configs.load("synthetic", overrides)


def _direct(paths, params, K: int, batch: int) -> dict:
  q, db, gnd = ground_truth.load_test_set(paths["test_features"], paths["gnd"])
  res = evaluate(q, db, gnd, Model(params, CFG), K=min(K, len(db)), batch_size=batch)
  return {synthetic.DATASET: {"first_round": mean_ap_percent(res["first_round"]),
                              "csa": mean_ap_percent(res["csa"]), "K": min(K, len(db))}}


@pytest.mark.parametrize("K", [12, 10 ** 6])  # the second: every image of the database
def test_evaluator_equals_a_direct_call_of_the_routine(bench, tmp_path, K):
  root, paths = bench
  ev = periodic_eval.make_evaluator(_config(root, K), str(tmp_path))
  assert ev.every == 1 and set(ev.sets) == {synthetic.DATASET}
  params = init_params(CFG, jax.random.key(3))
  got = ev(params, CFG)
  assert got == _direct(paths, params, K, batch=4)
  assert ev(params, CFG) == got  # the test set is read once, the numbers do not drift


@pytest.mark.slow
def test_the_training_loop_logs_the_routines_numbers(bench, tmp_path):
  from csa_jax.train.loop import train
  root, paths = bench
  result = train(_config(root, 12), str(tmp_path / "run"), progress=False)
  (rec,) = [r for r in result.history if r["kind"] == "eval"]
  assert rec["epoch"] == 1
  assert {synthetic.DATASET: rec[synthetic.DATASET]} == _direct(paths, result.params, 12, 4)
