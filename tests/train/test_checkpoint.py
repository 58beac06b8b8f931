"""Checkpoints: bitwise round trip of the whole training state, keep-last-k, atomicity."""

import os
import shutil

import jax
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.errors import InputError
from csa_jax.train import optim
from csa_jax.train import step as ts
from csa_jax.train.checkpoint import Checkpointer


def _state(seed, mesh):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                      "bias": rng.normal(size=(4,)).astype(np.float32)}}
  tx = optim.make_optimizer(base_lr=0.1, warmup_lr=0.01, final_lr=0.0, warmup_steps=2,
                            total_steps=9)
  opt = jax.device_get(tx.init(params))
  # Non-trivial optimizer state: momentum, schedule count and skipped count all set.
  opt = opt._replace(skipped=np.int32(seed), inner_state=jax.tree.map(
      lambda x: (rng.normal(size=np.shape(x)).astype(x.dtype) if x.dtype == np.float32
                 else np.asarray(seed + 3, x.dtype)), opt.inner_state))
  return parallel.put_replicated(ts.TrainState(np.int32(seed), params, opt), mesh)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_round_trip_is_bitwise_and_keeps_structure_sharding_rng_and_meta(tmp_path):
  mesh = parallel.make_mesh()
  state = _state(7, mesh)
  rng = jax.random.fold_in(jax.random.key(3), 5)
  ck = Checkpointer(str(tmp_path / "ck"), keep=2)
  ck.save(7, state, rng, {"epoch": 1, "step_in_epoch": 2, "seed": 0})
  # Restore into a fresh process-like layout: a differently-valued state of the same shape.
  restored, rng2, meta = Checkpointer(str(tmp_path / "ck")).restore(_state(1, mesh))
  assert type(restored) is ts.TrainState and type(restored.opt_state) is optim.SkipState
  for a, b in zip(_leaves(restored), _leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert restored.params["dense"]["kernel"].sharding.is_fully_replicated
  assert len(restored.params["dense"]["kernel"].sharding.device_set) == mesh.size
  np.testing.assert_array_equal(jax.random.key_data(rng2), jax.random.key_data(rng))
  assert meta == {"epoch": 1, "step_in_epoch": 2, "seed": 0}


def test_keeps_the_last_k_and_ignores_a_half_written_checkpoint(tmp_path):
  mesh = parallel.make_mesh(jax.devices()[:1])
  d = str(tmp_path / "ck")
  ck = Checkpointer(d, keep=2)
  key = jax.random.key(0)
  for step in (2, 4, 6):
    ck.save(step, _state(step, mesh), key, {"step": step})
  assert ck.all_steps() == [4, 6]
  # A save killed midway leaves orbax's temporary directory, never a step directory.
  partial = os.path.join(d, "8.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(d, "6"), partial)
  for root, _, files in os.walk(partial):
    for f in files[: len(files) // 2 + 1]:
      os.remove(os.path.join(root, f))
  ck2 = Checkpointer(d, keep=2)
  assert ck2.latest_step() == 6
  restored, _, meta = ck2.restore(_state(0, mesh))
  assert meta["step"] == 6 and int(restored.step) == 6
  ck2.save(8, _state(8, mesh), key, {"step": 8})
  assert ck2.all_steps() == [6, 8]
  assert not os.path.exists(partial)


def test_restore_without_checkpoints_is_an_input_error(tmp_path):
  ck = Checkpointer(str(tmp_path / "empty"))
  assert ck.latest_step() is None
  with pytest.raises(InputError, match="expected a checkpoint to resume from"):
    ck.restore(_state(0, parallel.make_mesh(jax.devices()[:1])))
  with pytest.raises(InputError, match="checkpoint.keep"):
    Checkpointer(str(tmp_path / "x"), keep=0)
