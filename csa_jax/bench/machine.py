"""What ``csa-jax bench`` needs to know about the machine: its description and torch's devices.

torch is optional: everything here works without it (the torch helpers import it when called).
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
    # pylint: disable-next=g-import-not-at-top
    from csa_jax.interop import torch_reference
    torch_reference.require_torch()
  except ImportError:
    return None
  return torch_reference


def torch_device(name: str = "auto"):
  """The ``torch.device`` called ``name``; "auto" is cuda when available, else cpu."""
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


def torch_sync(device):
  """A no-argument function that waits for ``device``'s queued work (a no-op on CPU)."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
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
  """Who ran, on what: host, accelerator, library versions, and the load when it started.

  Args:
    tdev: the ``torch.device`` of the PyTorch side, or None without it.

  Returns:
    A JSON-ready dict (date, hostname, CPU model and count, memory, load average, jax and torch
    versions and devices, XLA_FLAGS).
  """
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
