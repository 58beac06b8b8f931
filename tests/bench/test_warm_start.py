"""``warm_start``: a second process finds the first one's programs in the compilation cache."""

import pytest

from csa_jax.bench import warm_start

TINY = dict(model=dict(anchors=8, dim=16, depth=1, heads=2, drop=0.0, attn_drop=0.0,
                       drop_path=0.0), batch=2, descriptor_dim=16, db=32)


@pytest.mark.slow
@pytest.mark.parametrize("part, k", [("rerank", 12), ("train", 8)])
def test_the_warm_process_compiles_nothing(monkeypatch, part, k):
  # Tiny programs compile faster than the CLI's threshold: keep them all for the test.
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  res = warm_start.measure(warm_start.Spec(k=k, part=part, **TINY))
  assert "error" not in res, res
  assert res["cache_files_after_cold"] > 0  # the cold process kept what it compiled
  assert res["cache_files_after_warm"] == res["cache_files_after_cold"]  # the warm one loaded it
  for name in ("cold", "warm"):
    assert 0 < res[name]["first_call_s"] < res[name]["process_s"]
  assert res["warm_over_cold"] == pytest.approx(res["warm"]["first_call_s"]
                                                / res["cold"]["first_call_s"])


def test_a_failing_process_is_one_line():
  res = warm_start.measure(warm_start.Spec(k=12, part="rerank", **{**TINY, "model": {"dim": 15,
                                                                                    "heads": 2}}))
  assert set(res) == {"error"} and "\n" not in res["error"] and "exited" in res["error"]
