"""csa_jax.bench.race: first calls apart, interleaved rounds, a failing contestant left out."""

import numpy as np
import pytest

from csa_jax.bench import race


def test_race_interleaves_and_survives_a_failing_contestant():
  order = []

  def fn(name):
    return lambda: order.append(name)

  def oom():
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

  out = race.race({"a": fn("a"), "b": oom, "c": fn("c")}, repeats=3,
                  memory=lambda n, f: (123, "test"), label="t")
  assert out["b"]["error"].startswith("out of memory")
  # First calls alone, then rounds a, c, a, c, a, c.
  assert order == ["a", "c"] + ["a", "c"] * 3
  for name in "ac":
    assert len(out[name]["steady_s"]) == 3 and out[name]["peak_mem_bytes"] == 123
    assert out[name]["steady_median_s"] == pytest.approx(np.median(out[name]["steady_s"]))


def test_other_failures_are_named_by_their_type():
  def broken():
    raise ValueError("no compiler\nsecond line")

  out = race.race({"x": broken}, repeats=1, memory=lambda n, f: (0, "test"), label="t")
  assert out == {"x": {"error": "ValueError: no compiler"}}
