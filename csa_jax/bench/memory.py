"""Peak memory of one benchmark call, measured the same way for every contestant on a device.

Accelerators: torch's allocator peak (reset before the call); for csa_jax the device's
``peak_bytes_in_use`` (a process-wide peak: JAX cannot reset it). CPU: for csa_jax the compiled
program's temporaries and outputs (XLA's memory analysis; a resident-size probe misses buffers
reused from earlier calls), for PyTorch the rise of the process's resident high-water mark over
its resident size before the call.
"""

from __future__ import annotations

import jax


def _proc_status_kib(field: str):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return None


def _reset_hwm() -> bool:
  """Resets the process's resident-memory high-water mark (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def memory_probe(tdev=None):
  """A probe of the peak extra memory of one steady-state call.

  Args:
    tdev: the ``torch.device`` of the PyTorch contestants, or None without them.

  Returns:
    ``probe(name, fn) -> (bytes or None, method)``: runs ``fn`` once and measures it (on CPU a
    contestant with an ``xla_memory`` attribute is not run: its compiled program's analysis is
    read); contestants whose name starts with "torch" are measured on ``tdev``, the others on
    JAX's first device.
  """
  jax_dev = jax.devices()[0]

  def probe(name: str, fn):
    if name.startswith("torch") and tdev is not None and tdev.type == "cuda":
      import torch  # pylint: disable=g-import-not-at-top
      torch.cuda.synchronize(tdev)
      base = torch.cuda.memory_allocated(tdev)
      torch.cuda.reset_peak_memory_stats(tdev)
      fn()
      return torch.cuda.max_memory_allocated(tdev) - base, "torch.cuda.max_memory_allocated"
    if not name.startswith("torch") and jax_dev.platform != "cpu":
      fn()
      stats = jax_dev.memory_stats() or {}
      return stats.get("peak_bytes_in_use"), "jax peak_bytes_in_use (process-wide)"
    analysis = getattr(fn, "xla_memory", None)
    if analysis is not None:
      # CPU: the process's resident size cannot see buffers XLA reuses from earlier calls; the
      # compiled program's own accounting can, without running it again.
      mem = analysis()
      if mem is not None:
        return (int(mem.temp_size_in_bytes) + int(mem.output_size_in_bytes),
                "xla memory_analysis (temp + outputs)")
    if not _reset_hwm():
      return None, "unavailable"
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024, "rss high-water rise"
  return probe
