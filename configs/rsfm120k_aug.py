"""CSA on augmented rSfM120k (experiment_augrSfm120k.sh): three descriptor sets stacked.

Same recipe as configs/rsfm120k.py; each backbone's descriptors are their own samples with their
own neighbour lists and the shared cluster labels (SPEC section 2), so an epoch is 3x longer.
"""

import os

from csa_jax.configlib import ConfigDict, load_config_file


def get_config() -> ConfigDict:
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rsfm120k.py"))
  c.data.descriptors = (
      "train/gl18-tl-resnet50-gem-w.pkl",
      "train/gl18-tl-resnet101-gem-w.pkl",
      "train/gl18-tl-resnet152-gem-w.pkl",
  )
  c.checkpoint.every_steps = 3000
  return c
