"""The CLI's persistent compilation cache: where it lives, how it is turned off, and that a second
process loads what the first compiled instead of compiling it again."""

import os

import pytest

from csa_jax import compile_cache
from hostile_cli import expect_ok, run_cli

SMOKE = ["smoke", "--queries", "2", "--db", "64", "--dim", "32", "--K", "16", "--L", "8"]


def test_where_the_cache_lives(tmp_path):
  home = os.path.join(os.path.expanduser("~"), ".cache", "csa_jax", "xla")
  assert compile_cache.default_dir({}) == home
  assert compile_cache.default_dir({"XDG_CACHE_HOME": "/x"}) == "/x/csa_jax/xla"
  assert compile_cache.default_dir({"CSA_JAX_CACHE_DIR": str(tmp_path)}) == str(tmp_path)
  for off in ("", "off", "OFF", "0", "none"):
    assert compile_cache.default_dir({"CSA_JAX_CACHE_DIR": off}) is None
  # JAX's own setting wins over ours, even over "off".
  assert compile_cache.default_dir({"JAX_COMPILATION_CACHE_DIR": "/j",
                                    "CSA_JAX_CACHE_DIR": "off"}) == "/j"


def test_an_unusable_directory_only_turns_the_cache_off(tmp_path, caplog):
  (tmp_path / "file").write_text("x")
  assert compile_cache.enable(str(tmp_path / "file" / "cache")) is None
  assert "compilation cache off" in caplog.text
  assert compile_cache.enable(None) is None


def test_the_cli_keeps_programs_that_compile_in_a_tenth_of_a_second(tmp_path, monkeypatch):
  import jax  # noqa: PLC0415
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  try:
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    assert compile_cache.enable(str(tmp_path / "a")) == str(tmp_path / "a")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_S
    # The user's own JAX setting is left as it is.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2.5")
    compile_cache.enable(str(tmp_path / "b"))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def _files(d):
  return sorted(p for p in (str(x) for x in d.rglob("*")) if os.path.isfile(p))


@pytest.mark.slow
def test_a_second_process_loads_what_the_first_compiled(tmp_path):
  cache = tmp_path / "cache"
  env = {"CSA_JAX_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  expect_ok(run_cli(SMOKE, tmp_path, env=env))
  first = _files(cache)
  assert first, "the first process kept nothing"
  expect_ok(run_cli(SMOKE, tmp_path, env=env))
  assert _files(cache) == first  # every program came from the cache: nothing new was written
  off = tmp_path / "off"
  expect_ok(run_cli(["--no-compile-cache", *SMOKE], tmp_path,
                    env={**env, "CSA_JAX_CACHE_DIR": str(off)}))
  assert not off.exists()
