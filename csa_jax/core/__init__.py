"""The re-ranker itself: ``ModelConfig``, the Flax module, its jitted entry points, the
affinity features it reads and the training objective."""
