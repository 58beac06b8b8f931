"""csa_jax.bench.peak: the matmul peak is measured warm, over long enough runs, best of several."""

import pytest

from csa_jax.bench import peak


class SimulatedDevice:
  """``run(calls)`` on a device that is slow while cold: the first ``cold`` calls take 10x."""

  def __init__(self, cold: int, fast_s: float = 0.001):
    self.t, self.calls, self.cold, self.fast_s = 0.0, 0, cold, fast_s

  def clock(self) -> float:
    return self.t

  def run(self, calls: int) -> None:
    for _ in range(calls):
      self.calls += 1
      self.t += self.fast_s * (10 if self.calls <= self.cold else 1)
      self.t += 1e-5 if calls == 1 else 0.0  # a synchronisation after every single call


def test_a_cold_start_does_not_lower_the_peak():
  dev = SimulatedDevice(cold=10)
  rate, calls = peak.best_rate(dev.run, 1e9, repeats=3, warmup_s=0.2, min_run_s=0.05,
                               clock=dev.clock)
  # Warm: 1 GFLOP per 1 ms call is 1 TFLOP/s; the cold calls fell in the warm-up.
  assert rate == pytest.approx(1e12, rel=1e-6)
  assert calls == 50  # 0.05 s / 1 ms: the per-call synchronisation is amortised


def test_warm_up_lasts_at_least_two_calls_and_warmup_s():
  dev = SimulatedDevice(cold=0, fast_s=0.5)
  peak.best_rate(dev.run, 1.0, repeats=1, warmup_s=0.0, min_run_s=0.0, clock=dev.clock)
  assert dev.calls == 1 + 2 + 1  # compile, two warm-up calls, one timed run of one call
  dev = SimulatedDevice(cold=0, fast_s=0.01)
  peak.best_rate(dev.run, 1.0, repeats=1, warmup_s=0.1, min_run_s=0.0, clock=dev.clock)
  assert dev.calls >= 1 + 10 + 1


def test_matmul_peak_is_positive_and_the_best_of_both():
  res = peak.matmul_peak(64, "float32", None, repeats=2, warmup_s=0.01, min_run_s=0.001)
  assert res["jax_flops"] > 0 and res["device_peak_flops"] == res["jax_flops"]
  assert res["calls_per_run"]["jax"] >= 1 and "warm-up" in res["method"]
