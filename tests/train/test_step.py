"""The data-parallel step: 1 and 8 devices compute the same update; bad batches are skipped."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import training_outputs
from csa_jax.core.losses import csa_loss
from csa_jax.errors import InputError
from csa_jax.train import optim
from csa_jax.train import step as train_step
from csa_jax.train.train_set import random_train_set

K = L = 8
B = 16


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  """Compiles every ``jax.jit`` built in this module without XLA's backend optimisations.

  The same computation, 3x faster to compile on a busy 2-core machine; patched here so the
  library carries no test hook. Jits built before (at import) are left alone.
  """
  jit = jax.jit
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(jax, "jit", functools.partial(
        jit, compiler_options={"xla_backend_optimization_level": 0}))
    yield


@pytest.fixture(scope="module")
def setup():
  # Dropout on: the masks must not depend on how the batch is sharded either.
  cfg = ModelConfig(anchors=L, dim=16, depth=1, heads=2, mlp_ratio=2)
  tx = optim.make_optimizer(base_lr=0.5, warmup_lr=0.1, final_lr=0.0, warmup_steps=2,
                            total_steps=10, weight_decay=1e-3)
  sched = optim.warmup_cosine(0.1, 0.5, 0.0, 2, 10)
  data = random_train_set(64, 5, 12, max(K, L), seed=0)
  meshes = {n: parallel.make_mesh(jax.devices()[:n]) for n in (1, 8)}
  host_state = jax.device_get(train_step.init_state(cfg, tx, jax.random.key(0), meshes[1]))
  steps = {n: train_step.make_train_step(cfg, tx, m, 0.2, K, L, schedule=sched)
           for n, m in meshes.items()}
  arrays = {n: parallel.put_replicated((data.feats_NxC, data.nbrs_NxM, data.clusters_N), m)
            for n, m in meshes.items()}
  return dict(cfg=cfg, tx=tx, sched=sched, data=data, meshes=meshes, host_state=host_state,
              steps=steps, arrays=arrays)


def _plain_loss(params, aff, targets, rng, cfg):
  logits, mse = training_outputs(params, aff, cfg, rng)
  return csa_loss(logits, targets, mse, 0.2)[0]


def _run(s, n, idx_list, rngs):
  mesh = s["meshes"][n]
  state = parallel.put_replicated(s["host_state"], mesh)
  out = []
  for idx, rng in zip(idx_list, rngs):
    idx_B = train_step.global_batch_array(idx, mesh, B)
    state, m = s["steps"][n](state, s["arrays"][n], idx_B, rng)
    out.append(jax.device_get(m))
  return jax.device_get(state), out


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_loss_and_parameters(setup):
  idx = [np.arange(B), np.arange(B, 2 * B)]
  rngs = [jax.random.key(10), jax.random.key(11)]
  s1, m1 = _run(setup, 1, idx, rngs)
  s8, m8 = _run(setup, 8, idx, rngs)
  for a, b in zip(m1, m8):
    for k in ("loss", "contrastive", "mse", "grad_norm", "lr"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The step really moved the parameters, and the loss is the global-batch mean: it equals the
  # plain (unsharded, unjitted-step) loss of the first batch.
  p0 = setup["host_state"].params
  assert max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(s1.params), jax.tree.leaves(p0))) > 1e-4
  d = setup["data"]
  aff, tgt = training_affinity(d.feats_NxC, d.nbrs_NxM, d.clusters_N, idx[0], K, L)
  plain = jax.jit(lambda p, a, t, r: _plain_loss(p, a, t, r, setup["cfg"]))
  want = plain(p0, aff, tgt, rngs[0])
  np.testing.assert_allclose(m8[0]["loss"], float(want), rtol=1e-5)
  assert int(s8.step) == 2 and int(m8[-1]["skipped"]) == 0
  # Warm-up 0.1 -> 0.5 over 2 steps: the second step runs at the peak.
  np.testing.assert_allclose([m8[0]["lr"], m8[1]["lr"]], [0.1, 0.5], rtol=1e-6)


def test_dropout_key_changes_the_step(setup):
  idx = [np.arange(B)]
  _, ma = _run(setup, 8, idx, [jax.random.key(1)])
  _, mb = _run(setup, 8, idx, [jax.random.key(2)])
  assert abs(float(ma[0]["loss"]) - float(mb[0]["loss"])) > 1e-6


def test_a_nan_batch_is_skipped_counted_and_leaves_params_and_state_untouched(setup):
  mesh = setup["meshes"][1]
  step = train_step.make_batch_train_step(setup["cfg"], setup["tx"], mesh, 0.2)
  d = setup["data"]
  aff, tgt = training_affinity(d.feats_NxC, d.nbrs_NxM, d.clusters_N, np.arange(B), K, L)
  # The ready-batch variant computes what the on-device-affinity variant computes.
  state, m = step(parallel.put_replicated(setup["host_state"], mesh), aff, tgt, jax.random.key(10))
  ref, mref = _run(setup, 1, [np.arange(B)], [jax.random.key(10)])
  np.testing.assert_allclose(m["loss"], mref[0]["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  before = jax.device_get(state)
  bad = np.asarray(aff).copy()
  bad[3, 2, 1] = np.nan
  state, m = step(state, bad, tgt, jax.random.key(11))
  after = jax.device_get(state)
  assert not bool(m["ok"]) and int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(after.opt_state.inner_state),
                  jax.tree.leaves(before.opt_state.inner_state)):
    np.testing.assert_array_equal(a, b)
  assert int(after.step) == 2  # the batch was consumed: the data order moves on
  # A row without any positive target makes the loss +inf: skipped as well.
  no_pos = np.asarray(tgt).copy()
  no_pos[0] = 0.0
  state, m = step(state, aff, no_pos, jax.random.key(12))
  assert not bool(m["ok"]) and int(m["skipped"]) == 2
  state, m = step(state, aff, tgt, jax.random.key(13))
  assert bool(m["ok"]) and int(m["skipped"]) == 2


def test_batch_that_does_not_divide_over_the_devices_is_a_clear_error(setup):
  mesh = setup["meshes"][8]
  with pytest.raises(InputError, match="expected a positive multiple of the 8 devices.*found 12"):
    train_step.check_batch(12, mesh)
  state = parallel.put_replicated(setup["host_state"], mesh)
  with pytest.raises(InputError, match="multiple of the 8 devices"):
    setup["steps"][8](state, setup["arrays"][8], jnp.arange(12, dtype=jnp.int32),
                      jax.random.key(0))
  assert train_step.check_batch(16, mesh) == 2
  with pytest.raises(InputError, match=r"model\.anchors: expected the anchors per sample L = 9, "
                     r"found 8"):
    train_step.make_train_step(setup["cfg"], setup["tx"], mesh, 0.2, K, L + 1)


# -- gradient accumulation (train.microbatches) ------------------------------------------------

MB_BATCH = 32  # 4 rows per device on 8 devices, so m = 4 divides every shard
# Collectives a split of each device's shard must not need (the gradient all-reduce is expected).
RESHARDING = ("all-gather", "all-to-all", "collective-permute")


@pytest.fixture(scope="module")
def accumulated(setup):
  """Two steps without dropout (m = 1 vs m > 1 are then the same arithmetic), per (devices, m)."""
  cfg = ModelConfig(anchors=L, dim=16, depth=1, heads=2, mlp_ratio=2, drop=0.0, attn_drop=0.0,
                    drop_path=0.0)
  idx = [np.arange(MB_BATCH), np.arange(MB_BATCH, 2 * MB_BATCH)]
  out = {}
  for n, m in [(1, 1), (1, 2), (1, 4), (8, 4)]:
    mesh = setup["meshes"][n]
    step = train_step.make_train_step(cfg, setup["tx"], mesh, 0.2, K, L,
                                      schedule=setup["sched"], microbatches=m)
    state = parallel.put_replicated(setup["host_state"], mesh)
    batches = [train_step.global_batch_array(i, mesh, MB_BATCH) for i in idx]
    compiled = step.jitted.lower(state, setup["arrays"][n], batches[0],
                                 jax.random.key(0)).compile()
    metrics = []
    for t, b in enumerate(batches):
      state, mt = compiled(state, setup["arrays"][n], b, jax.random.key(20 + t))
      metrics.append(jax.device_get(mt))
    out[n, m] = {"metrics": metrics, "params": jax.device_get(state.params),
                 "opt": jax.device_get(state.opt_state), "compiled": compiled}
  return out


@pytest.mark.slow
def test_microbatches_compute_the_same_loss_metrics_and_parameters(setup, accumulated):
  ref = accumulated[1, 1]
  for key in [(1, 2), (1, 4), (8, 4)]:
    got = accumulated[key]
    for a, b in zip(ref["metrics"], got["metrics"]):
      for k in ("loss", "contrastive", "mse", "grad_norm", "lr"):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=f"{key} {k}")
      assert bool(b["ok"]) and int(b["skipped"]) == 0
    for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(got["params"])):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=str(key))
    # One optimizer update per global batch, not per microbatch.
    assert int(optim.optimizer_steps(got["opt"])) == 2
  # The steps really moved the parameters, so equal parameters mean equal updates.
  assert max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(ref["params"]),
                 jax.tree.leaves(setup["host_state"].params))) > 1e-4


@pytest.mark.slow
def test_microbatches_split_each_devices_shard_without_resharding(accumulated):
  hlo = accumulated[8, 4]["compiled"].as_text()
  assert "while" in hlo  # the scan over microbatches survived compilation
  assert not [op for op in RESHARDING if op in hlo]


@pytest.mark.slow
def test_microbatches_shrink_the_compiled_steps_temporaries(accumulated):
  temp = {m: accumulated[1, m]["compiled"].memory_analysis().temp_size_in_bytes
          for m in (1, 2, 4)}
  assert temp[4] < temp[2] < temp[1], temp


@pytest.mark.slow
def test_a_non_finite_microbatch_skips_the_whole_step(setup):
  mesh = setup["meshes"][8]
  step = train_step.make_batch_train_step(setup["cfg"], setup["tx"], mesh, 0.2, microbatches=2)
  d = setup["data"]
  aff, tgt = training_affinity(d.feats_NxC, d.nbrs_NxM, d.clusters_N, np.arange(B), K, L)
  bad = np.asarray(aff).copy()
  bad[5] = np.nan  # one sample of one microbatch
  state = parallel.put_replicated(setup["host_state"], mesh)
  state, m = step(state, bad, tgt, jax.random.key(3))
  assert not bool(m["ok"]) and int(m["skipped"]) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)),
                  jax.tree.leaves(setup["host_state"].params)):
    np.testing.assert_array_equal(a, b)
  state, m = step(state, aff, tgt, jax.random.key(4))
  assert bool(m["ok"]) and np.isfinite(float(m["loss"]))


@pytest.mark.parametrize("value,needle", [
    (0, "expected an integer >= 1, found 0"),
    (2.0, "expected an integer >= 1, found 2.0"),
    (True, "expected an integer >= 1, found True"),
    (4, "a divisor of the per-device batch 2 (train.global_batch 16 / 8 devices), found 4"),
])
def test_a_bad_microbatches_value_is_a_one_line_error(setup, value, needle):
  with pytest.raises(InputError) as e:
    train_step.check_microbatches(16, value, setup["meshes"][8])
  assert str(e.value).startswith("config: train.microbatches: ") and needle in str(e.value)
  assert "\n" not in str(e.value)


def test_microbatches_are_checked_when_the_step_is_built_and_called(setup):
  mesh = setup["meshes"][8]
  with pytest.raises(InputError, match="train.microbatches: expected an integer >= 1, found 0"):
    train_step.make_batch_train_step(setup["cfg"], setup["tx"], mesh, 0.2, microbatches=0)
  step = train_step.make_train_step(setup["cfg"], setup["tx"], mesh, 0.2, K, L, microbatches=4)
  state = parallel.put_replicated(setup["host_state"], mesh)
  with pytest.raises(InputError, match=r"^batch: train.microbatches: .*batch 2 .*found 4"):
    step(state, setup["arrays"][8], train_step.global_batch_array(np.arange(B), mesh, B),
         jax.random.key(0))


def test_train_refuses_a_bad_microbatches_config_before_any_work(tmp_path):
  from ml_collections import ConfigDict

  from csa_jax import configs
  from csa_jax.train import checks
  from csa_jax.train.loop import train
  tiny = configs.load("tiny")
  for value, needle in [(3, "a divisor of train.global_batch (16), found 3"),
                        (0, "an integer >= 1, found 0"), (2.5, "an integer >= 1, found 2.5")]:
    plain = tiny.to_dict()
    plain["train"]["microbatches"] = value
    with pytest.raises(InputError, match=r"^config: train.microbatches: expected ") as e:
      checks.validate_config(ConfigDict(plain))
    assert needle in str(e.value)
  # 16 divides by 4, but not the 2 rows each of the 8 devices gets: refused before the workdir
  # is used.
  with tiny.unlocked():
    tiny.train.microbatches = 4
  w = tmp_path / "w"
  with pytest.raises(InputError, match="per-device batch 2 .*8 devices"):
    train(tiny, str(w), progress=False)
  assert not w.exists() or not os.listdir(w)
  # Runs saved before the key existed resume unchanged with the default.
  saved = configs.as_plain(configs.load("tiny"))
  del saved["train"]["microbatches"]
  checks.check_resume_config(saved, configs.load("tiny"), "ckpt", allow_change=False)
  with pytest.raises(InputError, match="train.microbatches: expected the resumed run's value 1"):
    checks.check_resume_config(saved, tiny, "ckpt", allow_change=False)
