"""The timed race of ``csa-jax bench``: first calls apart, then interleaved rounds.

The first call of each contestant is timed alone (it pays the compilation); then ``repeats``
rounds call every contestant once each, in turn, so load from other processes on a shared
machine hits every contestant alike, and the median of the rounds is reported. A contestant that
fails (out of memory, torch.compile without a compiler) is reported and left out; the others
race on.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


def is_oom(e: BaseException) -> bool:
  """Whether an exception from JAX or torch means the device ran out of memory."""
  text = f"{type(e).__name__} {e}"
  return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text


def race(fns: dict, repeats: int, memory, label: str) -> dict:
  """Times the contestants: each first call alone, then ``repeats`` interleaved rounds.

  Args:
    fns: name -> contestant (a no-argument callable that runs one step to completion).
    repeats: timed rounds.
    memory: ``probe(name, fn) -> (bytes, method)`` (``memory.memory_probe``), run once per
      contestant after its first call.
    label: what is raced, for the progress log.

  Returns:
    name -> {'first_call_s', 'steady_s' (per round), 'steady_median_s', 'peak_mem_bytes',
    'peak_mem_method'}, or {'error': one line} for a contestant that failed its first call.
  """
  out, live = {}, {}
  for name, fn in fns.items():
    log.info("%s: %s: first call (compile)", label, name)
    try:
      t0 = time.perf_counter()
      fn()
      out[name] = {"first_call_s": time.perf_counter() - t0}
      out[name]["peak_mem_bytes"], out[name]["peak_mem_method"] = memory(name, fn)
      live[name] = fn
    except Exception as e:  # noqa: BLE001  (one contestant failing must not end the race)
      kind = "out of memory" if is_oom(e) else type(e).__name__
      out[name] = {"error": f"{kind}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
      log.warning("%s: %s: %s", label, name, out[name]["error"])
  times = {name: [] for name in live}
  for r in range(repeats):
    t_round = time.perf_counter()
    for name, fn in live.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
    log.info("%s: round %d/%d (%.1f s): %s", label, r + 1, repeats,
             time.perf_counter() - t_round, ", ".join(f"{n} {t[-1]:.3f} s"
                                                       for n, t in times.items()))
  for name, ts in times.items():
    out[name]["steady_s"] = ts
    out[name]["steady_median_s"] = float(np.median(ts)) if ts else None
  return out
