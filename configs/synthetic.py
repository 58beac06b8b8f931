"""CSA on the built-in synthetic landmark benchmark (csa_jax.data.synthetic, used by the demo).

  csa-jax train --config synthetic --config.data.root=DIR --workdir runs/synth

DIR is what ``csa_jax.data.synthetic.write_benchmark(DIR)`` wrote. A small model and short
schedule, so it trains in minutes on a laptop CPU; the recipe is otherwise the paper's. The demo
trains exactly this config (``csa_jax.experiments.demo.demo_config`` only adds where the data is
and how often to log): a model this small on this little data learns best without dropout and at
base lr 0.02 (at 0.1 test mAP peaked after one epoch and fell).
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.model = dict(anchors=64, dim=64, depth=2, heads=4, mlp_ratio=4, qkv_bias=True, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, temperature=2.0, dtype="float32",
                 attention="auto")
  c.data = dict(source="files", root=placeholder(str), descriptors=("train/synth-gem.npz",),
                annotations="annotations/retrieval-SfM-120k.json", split="train",
                cache_dir=placeholder(str), K=64)
  c.train = dict(global_batch=64, epochs=4, warmup_epochs=1, base_lr=0.02, warmup_lr=0.001,
                 final_lr=0.0, momentum=0.9, weight_decay=1e-6, clip_norm=0.0, alpha=0.2,
                 seed=0, microbatches=1)
  c.checkpoint = dict(every_steps=200, keep=2)
  # profile_steps 'A:B': a jax.profiler trace of steps A to B (docs/profiling.md).
  c.log = dict(every_steps=10, profile_steps="", profile_dir=placeholder(str))
  c.eval = dict(every_epochs=0, root=placeholder(str), datasets=("synth5k",),
                features="test/{ds}/synth-gem.npz", gnd="annotations/{ds}/gnd_{ds}.json",
                K=256, batch=16)
  return c
