"""``csa-jax train``'s multi-process flags: hyphenated, with the underscore spellings of earlier
versions kept as aliases, both reaching ``init_distributed`` the same way."""

import pytest

from csa_jax.cli import main as cli
from csa_jax.cli import train as train_cmd


class _Stop(Exception):
  """Raised by the stand-in init_distributed: the flags are parsed, nothing is trained."""


@pytest.fixture()
def seen(monkeypatch):
  got = []

  def record(coordinator, num_processes, process_id, auto=False):
    got.append((coordinator, num_processes, process_id, auto))
    raise _Stop

  monkeypatch.setattr(train_cmd, "init_distributed", record)
  return got


@pytest.mark.parametrize("flags", [
    ["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1"],
    ["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "1"],
    ["--coordinator-address=127.0.0.1:1234", "--num_processes=2", "--process-id=1"],
])
def test_both_spellings_reach_init_distributed(seen, tmp_path, flags):
  with pytest.raises(_Stop):
    train_cmd.main(["--config", "tiny", "--workdir", str(tmp_path / "w"), *flags])
  assert seen == [("127.0.0.1:1234", 2, 1, False)]
  assert not (tmp_path / "w").exists()


def test_distributed_flag_and_help_text(seen, tmp_path, capsys):
  with pytest.raises(_Stop):
    train_cmd.main(["--config", "tiny", "--workdir", str(tmp_path / "w"), "--distributed"])
  assert seen == [(None, None, None, True)]
  with pytest.raises(SystemExit):
    train_cmd.main(["--help"])
  shown = capsys.readouterr().out
  assert "--coordinator-address HOST:PORT" in shown and "--num-processes P" in shown


@pytest.mark.parametrize("flag", ["--num-processes", "--num_processes"])
def test_profile_refuses_a_multi_process_training_in_either_spelling(tmp_path, capsys, flag):
  rc = cli.main(["--profile", str(tmp_path / "p"), "train", "--config", "tiny", "--workdir",
                 str(tmp_path / "w"), flag, "2"])
  err = capsys.readouterr().err
  assert rc == 2 and "--profile: expected a single-process command" in err, err
  assert not (tmp_path / "p").exists() and not (tmp_path / "w").exists()
