"""XLA's persistent compilation cache for the CLI: a second process does not compile again.

``csa-jax`` keeps the programs it compiles (``eval --model``, ``rerank``, ``train --resume``,
``bench``, ...) in a cache directory, so the next process that runs the same program loads it
instead of compiling it (JAX's ``jax_compilation_cache_dir``). Programs that compiled in under
``MIN_COMPILE_S`` are not kept: JAX's own default, 1 s, would leave out every CPU program of the
paper model (its re-ranking compiles in about 0.5 s on two cores), and a file read saves less than
that; ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` set by the user wins. Where:

- ``JAX_COMPILATION_CACHE_DIR`` when the user set it (JAX's own setting wins);
- else ``CSA_JAX_CACHE_DIR``; the values ``off``, ``0``, ``none`` or an empty string turn the
  cache off (``csa-jax --no-compile-cache`` does the same for one command);
- else ``$XDG_CACHE_HOME/csa_jax/xla``, by default ``~/.cache/csa_jax/xla``.

Library code never turns it on by itself: a library user decides for their own process
(``enable(path)``).
"""

from __future__ import annotations

import logging
import os

import jax

ENV = "CSA_JAX_CACHE_DIR"
MIN_COMPILE_S = 0.1
_OFF = ("", "0", "off", "none", "false")

log = logging.getLogger(__name__)


def default_dir(environ=None) -> str | None:
  """Where the CLI keeps compiled programs, or None when the cache is off (module docstring).

  Args:
    environ: the environment to read (default ``os.environ``).

  Returns:
    An absolute directory path, or None.
  """
  env = os.environ if environ is None else environ
  if env.get("JAX_COMPILATION_CACHE_DIR"):
    return os.path.abspath(env["JAX_COMPILATION_CACHE_DIR"])
  if ENV in env:
    v = env[ENV].strip()
    return None if v.lower() in _OFF else os.path.abspath(os.path.expanduser(v))
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "csa_jax", "xla")


def enable(path: str | None) -> str | None:
  """Points JAX's persistent compilation cache at ``path`` (None: leaves it off).

  A directory that cannot be created is not an error: the command runs, compiling as usual,
  after one warning.

  Args:
    path: the cache directory.

  Returns:
    The directory in use, or None.
  """
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    log.warning("%s: compilation cache off (%s)", path, e.strerror or type(e).__name__)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
  return path
