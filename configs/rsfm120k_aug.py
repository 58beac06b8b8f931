"""CSA on augmented rSfM120k (experiment_augrSfm120k.sh): three descriptor sets stacked.

Same recipe as configs/rsfm120k.py; each backbone's descriptors are their own samples with their
own neighbour lists and the shared cluster labels (docs/method.md section 2), so an epoch is 3x
longer.
"""

from ml_collections import ConfigDict

from csa_jax import configs


def get_config() -> ConfigDict:
  c = configs.load_file("rsfm120k")
  c.data.descriptors = (
      "train/gl18-tl-resnet50-gem-w.pkl",
      "train/gl18-tl-resnet101-gem-w.pkl",
      "train/gl18-tl-resnet152-gem-w.pkl",
  )
  c.checkpoint.every_steps = 3000
  return c
