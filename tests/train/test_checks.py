"""Runs saved before a config key existed resume as if it had its default."""

import pytest

from csa_jax import configs
from csa_jax.errors import InputError
from csa_jax.train import checks


def test_run_saved_without_model_attention_resumes_with_auto():
  saved = configs.as_plain(configs.load("tiny"))
  del saved["model"]["attention"]
  checks.check_resume_config(saved, configs.load("tiny"), "ckpt", allow_change=False)
  changed = configs.load("tiny")
  with changed.unlocked():
    changed.model.attention = "xla"
  with pytest.raises(InputError, match="model.attention: expected the resumed run's value 'auto'"):
    checks.check_resume_config(saved, changed, "ckpt", allow_change=False)
