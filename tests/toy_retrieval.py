"""Small retrieval problems and CSA models for the re-ranking tests (shared by tests/retrieval
and tests/cli)."""

from __future__ import annotations

import numpy as np

from csa_jax.core.config import ModelConfig
from csa_jax.core.normalize import l2_normalize
from csa_jax.interop import state_dict as interop


def unit_rows(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
  """(n, c) float32 rows of unit norm, random directions."""
  return l2_normalize(rng.standard_normal((n, c)).astype(np.float32))


def queries_and_db(rng: np.random.Generator, nq: int, ndb: int, c: int, near: int = 0):
  """(q_QxC, db_NxC) unit rows; the db's first ``near`` rows are noisy copies of the queries
  (``near // nq`` per query, in query order), so each query has true neighbours to find."""
  q, db = unit_rows(rng, nq, c), unit_rows(rng, ndb, c)
  if near:
    db[:near] = l2_normalize(np.repeat(q, near // nq, 0) + 0.9 * rng.standard_normal((near, c)))
  return q, db


def spread_params(cfg: ModelConfig, rng: np.random.Generator):
  """CSA parameters with N(0, 0.3) entries in the original layout: unlike ``init_params``' 0.02,
  large enough that CSA's scores are well apart (no near-ties for float rounding to flip)."""
  sd = {k: rng.normal(0, 0.3, s).astype(np.float32)
        for k, s in interop._expected_shapes(cfg).items()}
  return interop.params_from_torch_state_dict(sd, heads=cfg.heads)[0]
