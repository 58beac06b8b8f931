"""``csa_jax.fileio``: outputs never alias inputs; only csa_jax's own temporary files are removed.

Also ``csa_jax.errors``: an error message stays one line whatever text it quotes.
"""

import os

import pytest

from csa_jax import fileio
from csa_jax.errors import InputError, fail, one_line


@pytest.fixture
def d(tmp_path):
  (tmp_path / "in.npz").write_bytes(b"descriptors")
  (tmp_path / "work").mkdir()
  (tmp_path / "work" / "state_dict.npz").write_bytes(b"model")
  return tmp_path


def _refused(outputs, inputs) -> str:
  with pytest.raises(InputError) as e:
    fileio.check_distinct(outputs, inputs)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_same_path_is_refused_naming_both_flags(d):
  msg = _refused([("--out", d / "in.npz")], [("--query", d / "in.npz")])
  assert msg.startswith(f"{d / 'in.npz'}: --out: expected ")
  assert "--query" in msg


def test_other_spellings_of_the_same_path_are_refused(d, monkeypatch):
  monkeypatch.chdir(d)
  assert "--db" in _refused([("--out", "work/../in.npz")], [("--db", str(d / "in.npz"))])
  assert "--db" in _refused([("--out", "./in.npz")], [("--db", "in.npz")])


def test_symlink_and_hard_link_to_an_input_are_refused(d):
  os.symlink(d / "in.npz", d / "link.npz")
  os.link(d / "in.npz", d / "hard.npz")
  assert "--gnd" in _refused([("--out", d / "link.npz")], [("--gnd", d / "in.npz")])
  assert "--gnd" in _refused([("--out", d / "hard.npz")], [("--gnd", d / "in.npz")])
  # The input named through the link, the output by its real name: the same file.
  assert "--gnd" in _refused([("--out", d / "in.npz")], [("--gnd", d / "link.npz")])


def test_a_dangling_symlink_into_an_input_directory_is_refused(d):
  os.symlink(d / "work" / "new.json", d / "out.json")
  msg = _refused([("--out", d / "out.json")], [("--model", d / "work")])
  assert "--model" in msg and "inside" in msg


def test_output_inside_an_input_directory_is_refused(d):
  msg = _refused([("--out", d / "work" / "eval.json")], [("--model", d / "work")])
  assert "--model" in msg


def test_two_outputs_on_one_file_are_refused(d):
  msg = _refused([("--out", d / "a.json"), ("--curves", d / "x" / ".." / "a.json")], [])
  assert "--out" in msg and "--curves" in msg


def test_distinct_paths_pass_and_missing_inputs_are_skipped(d):
  fileio.check_distinct([("--out", d / "out.npz"), ("--out", d / "out.json")],
                        [("--query", d / "in.npz"), ("--db-names", None), ("--model", ""),
                         ("--db", d / "no_such_file.npz"), ("--model", d / "work")])
  # A sibling whose name extends the directory's is not inside it.
  fileio.check_distinct([("--out", d / "work2" / "x.json")], [("--model", d / "work")])


def test_temporary_files_carry_the_csa_jax_tag(tmp_path):
  with fileio.atomic_path(tmp_path / "out.json") as tmp:
    name = os.path.basename(tmp)
    assert name.startswith(".out.json.csa_jax-") and name.endswith(".tmp")
    assert fileio.is_temp_name(name)
    assert os.stat(tmp).st_mode & 0o777 == 0o600  # private while written
  with fileio.atomic_paths([tmp_path / "a.npz", tmp_path / "b.csv"]) as tmps:
    assert all(fileio.is_temp_name(os.path.basename(t)) for t in tmps)
  assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.csv", "out.json"]


@pytest.mark.parametrize("name,ours", [
    (".notes.tmp", False),
    (".draft.docx.tmp", False),
    (".report.json.backup1.tmp", False),  # a user's, though shaped like the legacy names
    ("notes.csa_jax-0123456789ab.tmp", False),  # no leading dot
    (".x.csa_jax-0123456789AB.tmp", False),
    (".x.csa_jax-0123456789a.tmp", False),
    (".x.json.csa_jax-0123456789ab.tmp", True),
    (".state_dict.npz.k1ll3d.tmp", True),  # a killed pre-tag csa_jax run's export
    (".metrics.jsonl.abc_1234.tmp", True),
])
def test_is_temp_name(name, ours):
  assert fileio.is_temp_name(name) is ours


def test_remove_stale_temps_removes_only_its_own(tmp_path):
  user = [".notes.tmp", ".draft.docx.tmp", "a.tmp", ".results.json.old.tmp"]
  for n in user:
    (tmp_path / n).write_text("mine")
  ours = [tmp_path / ".state_dict.npz.csa_jax-00112233aabb.tmp",
          tmp_path / ".config.json.k1ll3d.tmp"]
  for p in ours:
    p.write_text("half")
  # Named like ours but not a regular file: a directory and a symlink stay (and its target).
  (tmp_path / ".d.csa_jax-00112233aabb.tmp").mkdir()
  (tmp_path / "target").write_text("keep")
  os.symlink(tmp_path / "target", tmp_path / ".l.csa_jax-00112233aabb.tmp")
  removed = fileio.remove_stale_temps(tmp_path)
  assert sorted(removed) == sorted(map(str, ours))
  for n in user:
    assert (tmp_path / n).read_text() == "mine"
  assert (tmp_path / ".d.csa_jax-00112233aabb.tmp").is_dir()
  assert (tmp_path / ".l.csa_jax-00112233aabb.tmp").read_text() == "keep"
  assert fileio.remove_stale_temps(tmp_path / "no_such_dir") == []


@pytest.mark.parametrize("bad,shown", [
    ("rox\nford", "rox\\nford"), ("a\rb", "a\\rb"), ("a\u2028b", "a\\u2028b"),
    ("a\u2029b", "a\\u2029b"), ("a\x1b[2Jb", "a\\x1b[2Jb"), ("a\x85b", "a\\x85b"),
    ("a\tb", "a\\tb"), ("a\ud800b", "a\\ud800b"), ("a\u202eb", "a\\u202eb"),
])
def test_error_messages_stay_one_line(bad, shown):
  msg = str(fail(bad, "key", "a name", bad))
  assert msg == f"{shown}: key: expected a name, found {shown}"
  assert len(msg.splitlines()) == 1
  assert msg.encode("utf-8")  # no lone surrogate left to fail on stderr


def test_one_line_keeps_ordinary_text():
  text = "/data/Ünïcode 日本/x.npz: names: expected 3, found 2 (a space, a\u00a0nbsp)"
  assert one_line(text) == text
  assert one_line(one_line("a\nb")) == "a\\nb"
