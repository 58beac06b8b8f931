"""How many queries one re-ranking call takes: sized to the device's free memory.

On accelerators the cost per query is read from the compiled program (XLA's memory analysis of
``rerank_scores`` for one query, plus the query's affinity input and gathered database rows), and
the batch takes half of the memory the device reports free, so streaming R1M-sized runs never
run out while large batches keep the device busy. On CPU batches are not worth memory: the model
runs one query at a time there (``core.forward.rerank_scores``), so a small fixed batch suffices.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params, rerank_scores

CPU_BATCH = 8  # per device
MAX_BATCH = 512  # per device: beyond this a larger batch no longer raises throughput
MEMORY_SHARE = 0.5  # of the free device memory: headroom for the allocator and other arrays

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def query_bytes(cfg: ModelConfig, K: int, C: int, device=None) -> int:
  """Device bytes one query of a re-ranking batch needs (cached: one compile per shape).

  Args:
    cfg: the model (it fixes every parameter's shape; the values play no part).
    K: candidates per query.
    C: descriptor size.
    device: where the model runs (default: the first device).

  Returns:
    XLA's temporary bytes of ``rerank_scores`` at batch 1, plus the affinity input
    ((K+1) x L float32) and the query's gathered db rows (max(K, L-1) x C float32).
  """
  device = device or jax.devices()[0]
  aff = jax.ShapeDtypeStruct((1, K + 1, cfg.anchors), jnp.float32)
  p = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  with jax.default_device(device):
    mem = rerank_scores.lower(p, aff, cfg).compile().memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0) if mem is not None else 0
  return temp + 4 * ((K + 1) * cfg.anchors + max(K, cfg.anchors - 1) * C)


def auto_batch_size(cfg: ModelConfig, K: int, C: int, devices) -> int:
  """Queries per re-ranking call for ``devices``, a multiple of their number.

  Args:
    cfg: the model.
    K: candidates per query.
    C: descriptor size.
    devices: the devices a batch is split over.

  Returns:
    ``CPU_BATCH`` per device on CPU; elsewhere as many queries per device as fit in
    ``MEMORY_SHARE`` of the first device's free memory, between 1 and ``MAX_BATCH``.
  """
  devices = list(devices)
  dev = devices[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if not stats or "bytes_limit" not in stats:
    return CPU_BATCH * len(devices)
  free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  per_query = query_bytes(cfg, K, C, dev)
  per_device = max(1, min(MAX_BATCH, int(MEMORY_SHARE * free) // max(1, per_query)))
  log.info("rerank: %d queries per device call (%.1f MiB each, %.1f GiB free on %s)",
           per_device, per_query / 2**20, free / 2**30, dev.device_kind)
  return per_device * len(devices)
