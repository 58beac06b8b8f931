"""One study's settings (``Context``) and the base training config every study varies.

By default the data is the built-in synthetic benchmark (the demo's, written to ``<out>/data``)
and the base recipe and test-time K are the demo's, so that the studies' numbers and the README's
demo table describe the same model; a data root in the docs/method.md section 6 layout uses
configs/rsfm120k.py instead. ``size="tiny"`` shrinks benchmark, model and schedule to seconds:
the demo's tiny benchmark and test-time K (``demo.SIZES["tiny"]``), configs/tiny.py's model and
schedule (``configs.tiny_overrides``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import ml_collections

from csa_jax import configs
from csa_jax.errors import InputError
from csa_jax.experiments import demo
from csa_jax.experiments.datasets import StudyData, write_synthetic
from csa_jax.fileio import check_output_path


def set_value(config, key: str, value) -> None:
  """Sets the dotted ``key`` of ``config`` as the command line's ``--config.key=value`` would."""
  configs.set_override(config, key, json.dumps(value) if isinstance(value, (list, tuple))
                       else str(value), source="experiment")


@dataclasses.dataclass
class Context:
  """One study's settings: where to write, the base training config, the data, test-time K."""

  name: str
  out: str
  config: ml_collections.ConfigDict  # base training config (overrides applied, unfrozen)
  data: StudyData  # the descriptor and test sets the study trains and tests on
  K: int  # test-time re-ranking depth
  feature: str  # the default descriptor set
  size: str = "default"
  progress: bool = True
  model_path: str | None = None

  def path(self, *parts) -> str:
    """A path under the study's output directory."""
    return os.path.join(self.out, *parts)

  def make_config(self, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """A copy of the base config with ``{dotted key: value}`` overrides applied."""
    config = copy.deepcopy(self.config)
    for k, v in (overrides or {}).items():
      set_value(config, k, v)
    return config


def make_context(name: str, out: str, *, size: str = "default", data: str | None = None,
                 features: list[str] | None = None, datasets: list[str] | None = None,
                 K: int | None = None, config_path: str | None = None, overrides=(),
                 progress: bool = True, model_path: str | None = None) -> Context:
  """A study's Context; writes the synthetic benchmark under ``<out>/data`` when ``data`` is None.

  Args:
    name: the study (``dispatch.EXPERIMENTS``).
    out: the output directory (outputs, data, training runs).
    size: "default" or "tiny" (benchmark, model, schedule and grids in seconds).
    data: a data root in the docs/method.md section 6 layout, or None for the synthetic one.
    features: descriptor set names, the first the default (required with ``data``).
    datasets: test set names (with ``data``; default roxford5k and rparis6k).
    K: test-time re-ranking depth (default: the config's eval.K, or the demo's).
    config_path: base config file (default configs/rsfm120k.py with data, else the demo's).
    overrides: (dotted key, value string) pairs from ``--config.key=value``.
    progress: training progress bars.
    model_path: a trained model for the studies that take one (baselines, kl-sweep).

  Returns:
    The ``Context``.
  """
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise InputError(f"{out}: --out: expected a directory for the study's outputs, found a file")
  check_output_path(os.path.join(out, "study.json"), "--out")
  if size not in demo.SIZES:
    raise InputError(f"command line: --size: expected one of {sorted(demo.SIZES)}, found "
                     f"{size!r}")
  benchmark, _, size_k = demo.SIZES[size]
  if data:
    if not features:
      raise InputError("command line: --features: expected descriptor set names with --data "
                       "(e.g. gl18-tl-resnet101-gem-w), found none")
    study_data = StudyData(os.path.abspath(data), features,
                           datasets or ["roxford5k", "rparis6k"])
    config = configs.load_file(config_path or "rsfm120k")
    default_k = config.get("eval", {}).get("K", 1024)
  else:
    study_data = write_synthetic(os.path.join(out, "data"), benchmark)
    if features:
      unknown = sorted(set(features) - set(study_data.features))
      if unknown:
        raise InputError(f"command line: --features: expected synthetic sets "
                         f"{study_data.features}, found {unknown}")
      study_data.features = list(features)
    config = (configs.load_file(config_path) if config_path
              else demo.demo_config(study_data.root))
    default_k = config.get("eval", {}).get("K", size_k) if config_path else size_k
  if size == "tiny":
    for k, v in configs.tiny_overrides().items():
      set_value(config, k, v)
  for k, v in overrides:
    configs.set_override(config, k, v)
  configs.set_override(config, "data.root", study_data.root, source="experiment")
  K = K or (size_k if size == "tiny" else default_k)
  configs.check_positive("--K", K)
  return Context(name=name, out=out, config=config, data=study_data, K=K,
                 feature=study_data.features[0], size=size, progress=progress,
                 model_path=model_path)
