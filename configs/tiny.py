"""A tiny model on in-memory random clusters: seconds per run, for tests and smoke checks.

global_batch 16 divides over 1, 2, 4 or 8 devices (the tests' fake CPU devices).
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.model = dict(anchors=8, dim=16, depth=1, heads=2, mlp_ratio=2, qkv_bias=True, drop=0.1,
                 attn_drop=0.1, drop_path=0.1, temperature=2.0, dtype="float32",
                 attention="auto")
  c.data = dict(source="random", root=placeholder(str), descriptors=(),
                annotations=placeholder(str), split="train", cache_dir=placeholder(str), K=8,
                num_samples=96, num_clusters=6, dim=12)
  c.train = dict(global_batch=16, epochs=2, warmup_epochs=1, base_lr=0.1, warmup_lr=0.01,
                 final_lr=0.0, momentum=0.9, weight_decay=1e-4, clip_norm=0.0, alpha=0.2,
                 seed=0, microbatches=1)
  c.checkpoint = dict(every_steps=4, keep=2)
  # profile_steps 'A:B': a jax.profiler trace of steps A to B (docs/profiling.md).
  c.log = dict(every_steps=2, profile_steps="", profile_dir=placeholder(str))
  c.eval = dict(every_epochs=0)
  return c
