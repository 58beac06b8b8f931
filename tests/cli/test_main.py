"""The dispatcher: help, unknown commands, and the InputError contract."""

import subprocess
import sys

import pytest

from csa_jax.cli import main as cli
from csa_jax.cli import smoke


def test_help_lists_commands(capsys):
  assert cli.main(["--help"]) == 0
  assert "smoke" in capsys.readouterr().out


def test_unknown_command_exit_2(capsys):
  assert cli.main(["frobnicate"]) == 2
  assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.slow
def test_input_error_is_one_line_exit_2(tmp_path):
  # Through a real process: no traceback may reach the user.
  code = ("import sys; from csa_jax import errors; from csa_jax.cli import main, smoke\n"
          "def bad(argv): raise errors.fail('x.npy', 'db', '(n, 2048)', '(3,)')\n"
          "smoke.main = bad\n"
          "sys.exit(main.main(['smoke']))\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "csa-jax smoke: error: x.npy: db: expected (n, 2048), found (3,)"]


def test_smoke_runs_small():
  r = smoke.run(queries=2, db=64, dim=32, k=16, l=8)
  assert r["shapes"] == {"top": [2, 16], "affinity": [2, 17, 8], "scores": [2, 16],
                         "new_top": [2, 16]}
  assert 0.0 <= r["fraction_of_top_k_moved"] <= 1.0 and r["queries_per_s"] > 0


def test_smoke_command_prints_its_shapes(capsys):
  assert cli.main(["smoke", "--queries", "2", "--db", "64", "--dim", "32", "--K", "16",
                   "--L", "8"]) == 0
  out = capsys.readouterr().out
  assert "affinity  (2, 17, 8)" in out and "new_top   (2, 16)" in out


def test_bench_command_is_the_cli_module(capsys):
  assert cli.COMMANDS["bench"][0] == "csa_jax.cli.bench"
  with pytest.raises(SystemExit) as e:
    cli.main(["bench", "--help"])
  assert e.value.code == 0 and "--no-torch" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--version"], ["-V"], ["--quiet", "--version"]])
def test_version(capsys, flags):
  import csa_jax
  assert cli.main(flags) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2 and out[0].startswith(f"csa-jax {csa_jax.__version__} (python ")
  assert "jaxlib" in out[0] and "flax" in out[0] and "optax" in out[0] and "numpy" in out[0]
  assert out[1].startswith("backend cpu: 8 devices (cpu)")


@pytest.mark.slow
def test_version_in_a_process():
  r = subprocess.run([sys.executable, "-m", "csa_jax.cli.main", "-V"], capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.startswith("csa-jax ") and r.stderr == ""


def test_rerank_is_listed(capsys):
  assert cli.COMMANDS["rerank"][0] == "csa_jax.cli.rerank"
  cli.main(["--help"])
  assert "rerank" in capsys.readouterr().out
