"""What ``csa-jax bench`` needs to know about the machine: description, devices, peak memory.

Kept apart from the benchmark itself so that the timing code reads as the race it is. torch is
optional: everything here works without it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import jax
import numpy as np


def try_import_torch_model():
  """csa_jax.interop.torch_reference with torch importable, else None."""
  try:
    from csa_jax.interop import torch_reference as torch_model  # pylint: disable=g-import-not-at-top
    torch_model.require_torch()
  except ImportError:
    return None
  return torch_model


def torch_device(name: str = "auto"):
  import torch  # pylint: disable=g-import-not-at-top
  if name == "auto":
    name = "cuda" if torch.cuda.is_available() else "cpu"
  return torch.device(name)


def to_torch(a: np.ndarray, device):
  """A torch copy of a host array on ``device``; integer arrays become int64 (index) tensors."""
  import torch  # pylint: disable=g-import-not-at-top
  a = np.asarray(a)
  t = torch.tensor(a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a)
  return t.to(device)


def _cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return platform.processor() or platform.machine()


def _mem_total_bytes():
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def machine_info(tdev=None) -> dict:
  """Who ran, on what: host, accelerator, library versions, and the load when it started."""
  dev = jax.devices()[0]
  info = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "hostname": platform.node(), "platform": platform.platform(),
      "python": platform.python_version(), "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(), "mem_total_bytes": _mem_total_bytes(),
      "loadavg_start": list(os.getloadavg()),
      "jax_version": jax.__version__, "jax_backend": jax.default_backend(),
      "jax_device": getattr(dev, "device_kind", str(dev)), "jax_device_count": jax.device_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if tdev is not None:
    import torch  # pylint: disable=g-import-not-at-top
    info.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_device=str(tdev))
    if tdev.type == "cuda":
      info["torch_device_name"] = torch.cuda.get_device_name(tdev)
  return info


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
  """Returns ``probe(name, fn) -> (bytes, method)``: peak extra memory of one steady-state call.

  Accelerators: torch's allocator peak (reset before the call); for csa_jax the device's
  ``peak_bytes_in_use`` (a process-wide peak: JAX cannot reset it). CPU, both sides alike: the rise
  of the process's resident high-water mark over its resident size before the call.
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
    if not _reset_hwm():
      return None, "unavailable"
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024, "rss high-water rise"
  return probe
