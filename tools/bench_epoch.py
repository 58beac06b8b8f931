"""Times one training epoch end to end through the real CLI, ``csa-jax train``.

  python tools/bench_epoch.py [--samples 91642] [--batch 256] [--k 512] [--dim 2048]
                              [--out bench_epoch.json] [--dir /tmp] [--keep] [--timeout S]
                              [--neighbors planted|compute] [--set KEY=VALUE ...] [--tiny]

Writes an rSfM120k-sized training set into a temporary data root in the layout ``csa-jax train``
reads (docs/data.md): ``train/bench-gem.npy``, ``--samples`` random unit descriptors of size
``--dim`` (cluster centre plus noise, contiguous clusters of about 166 images as rSfM120k's 551
clusters of 91,642 images; written a block of rows at a time), and
``annotations/retrieval-SfM-120k.json`` with their cluster labels. By default it also plants the
neighbour lists (``--neighbors planted``: each image's ring of nearest indices, which are its own
cluster's, stored where ``csa_jax.retrieval.neighbors`` caches them, keyed by the descriptors'
content), so the run times the epoch rather than the one-off N x N neighbour search; the cost of
a step does not depend on which neighbours are listed. ``--neighbors compute`` leaves the search
to ``csa-jax train`` (its time then counts in start-up).

Then it runs, as its own process,

  python -m csa_jax.cli.main train --config rsfm120k --workdir <dir>/run
      --config.data.root=<dir>/data --config.data.descriptors=train/bench-gem.npy
      --config.data.annotations=annotations/retrieval-SfM-120k.json
      --config.data.cache_dir=<dir>/data/neighbors --config.data.K=<k>
      --config.train.global_batch=<batch> --config.train.epochs=1 --config.train.warmup_epochs=1

(the paper model and recipe: L=512, D=768, depth 2, 12 heads, bfloat16, SGD with the warm-up's
learning rate, a checkpoint at the end of the epoch, the export), reads its log as it is written
(each line timestamped on arrival) and its ``metrics.jsonl``, and writes one JSON to ``--out``
and one summary line to stdout. ``--set model.attention=cudnn`` adds any ``--config.KEY=VALUE``.
``--tiny`` is the same path at a size a CPU runs in seconds (configs/tiny.py's model, 200 samples,
batch 16, K=8) to check the tool itself.

The JSON's times (seconds):
  wall_s          the whole ``csa-jax train`` process: start-up, data, compilation, the epoch,
                  the checkpoint, the export;
  generate_s      writing the data set (and the planted neighbour lists), before the process;
  startup_s       process start to the "train: N samples" line: imports, reading and checking
                  the descriptors, the neighbour lists, initialising the model;
  first_step_s    the first step, compilation included (metrics.jsonl);
  steps_s         steps 2..N as the run's throughput intervals measure them (checkpoint time
                  left out); step_s = steps_s / (N - 1), samples_per_s = batch / step_s;
  epoch_s         the epoch's steps without start-up and compilation: step_s * N;
  finish_s        the last progress line to the "train: done" line: the end-of-epoch checkpoint
                  and the export (state_dict.npz and .pth).
samples_trained is the last metrics record's step times the batch; an epoch is
steps_per_epoch = samples // batch full batches (the remainder is dropped, as in the original).
The temporary directory is removed at the end unless ``--keep`` (then ``dir`` names it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

FEATURE = "bench-gem"
ANNOTATIONS = os.path.join("annotations", "retrieval-SfM-120k.json")
CLUSTER_SIZE = 166  # rSfM120k: 91,642 training images in 551 clusters
BLOCK_ROWS = 8192  # descriptor rows generated and written at a time
PAPER = {"samples": 91642, "batch": 256, "k": 512, "dim": 2048}
# configs/tiny.py's model and a few batches of it: seconds on a CPU.
TINY = {"samples": 200, "batch": 16, "k": 8, "dim": 32}
TINY_SETS = ("model.anchors=8", "model.dim=16", "model.depth=1", "model.heads=2",
             "model.mlp_ratio=2", "log.every_steps=4")

_ANNOUNCE = re.compile(r"train: (\d+) samples, (\d+) steps/epoch")
_PROGRESS = re.compile(r"train: step (\d+)/(\d+)")
_DONE = re.compile(r"train: done at step (\d+)")


class Interrupted(Exception):
  """SIGTERM (an outer timeout): the run is stopped and what was measured is still written."""


def say(msg: str) -> None:
  print(f"[bench_epoch] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The data set.


def write_dataset(root: str, samples: int, dim: int, seed: int = 0) -> dict:
  """Descriptors (a float32 (samples, dim) .npy) and annotations in the training layout.

  Args:
    root: the data root (created).
    samples: training images N.
    dim: descriptor size C.
    seed: numpy seed.

  Returns:
    {'descriptors', 'annotations'}: the files, and 'clusters', the labels (int32, contiguous
    blocks of ``CLUSTER_SIZE``).
  """
  os.makedirs(os.path.join(root, "train"), exist_ok=True)
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  rng = np.random.default_rng(seed)
  clusters = (np.arange(samples) // CLUSTER_SIZE).astype(np.int32)
  centres = rng.standard_normal((int(clusters[-1]) + 1, dim), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  path = os.path.join(root, "train", FEATURE + ".npy")
  out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples, dim))
  noise = np.float32(0.8 / np.sqrt(dim))  # images of a cluster: cosine about 0.6 to each other
  for a in range(0, samples, BLOCK_ROWS):
    b = min(samples, a + BLOCK_ROWS)
    x = centres[clusters[a:b]] + noise * rng.standard_normal((b - a, dim), dtype=np.float32)
    out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
  out.flush()
  del out
  ann = os.path.join(root, ANNOTATIONS)
  with open(ann, "w") as f:
    json.dump({"train": {"cluster": clusters.tolist()}}, f)
  return {"descriptors": path, "annotations": ann, "clusters": clusters}


def planted_neighbors(samples: int, m: int) -> np.ndarray:
  """Row i: i, i+1, i-1, i+2, i-2, ... (mod samples): m distinct images, itself first."""
  if m >= samples:
    raise ValueError(f"planted_neighbors: need more samples ({samples}) than neighbours ({m})")
  off = np.zeros(m, np.int64)
  steps = np.arange(1, m)
  off[1:] = np.where(steps % 2 == 1, (steps + 1) // 2, -(steps // 2))
  out = np.empty((samples, m), np.int32)
  for a in range(0, samples, BLOCK_ROWS):
    b = min(samples, a + BLOCK_ROWS)
    out[a:b] = (np.arange(a, b)[:, None] + off[None, :]) % samples
  return out


def plant_neighbor_cache(descriptors: str, cache_dir: str, K: int, L: int) -> str:
  """Stores ``planted_neighbors`` where ``csa-jax train`` looks for the descriptors' lists.

  The entry is keyed as ``csa_jax.retrieval.neighbors.load_or_compute`` keys it (the content of
  the descriptors as the loader returns them: these are float32 unit rows, returned as stored).

  Returns:
    The cache file.
  """
  from csa_jax.fileio import save_npz  # noqa: PLC0415  (imports jax: only when planting)
  from csa_jax.retrieval import neighbors  # noqa: PLC0415

  feats = np.load(descriptors, mmap_mode="r")
  digest = neighbors.content_hash(feats)
  path = neighbors.cache_path(cache_dir, digest, K, L)
  os.makedirs(cache_dir, exist_ok=True)
  save_npz(path, nbrs=planted_neighbors(len(feats), max(K, L)), hash=np.array(digest),
           K=np.array(K), L=np.array(L), version=np.array(neighbors.CACHE_VERSION))
  return path


# ----------------------------------------------------------------------------------------------
# The run.


def train_command(args, root: str, workdir: str) -> list[str]:
  """The ``csa-jax train`` command line of one epoch on the data under ``root``."""
  sets = [f"data.root={root}", f"data.descriptors=train/{FEATURE}.npy",
          f"data.annotations={ANNOTATIONS}", f"data.cache_dir={os.path.join(root, 'neighbors')}",
          f"data.K={args.k}", f"train.global_batch={args.batch}", "train.epochs=1",
          "train.warmup_epochs=1"]
  sets += list(TINY_SETS if args.tiny else ()) + list(args.set)
  return [sys.executable, "-m", "csa_jax.cli.main", "train", "--config", args.config,
          "--workdir", workdir] + [f"--config.{s}" for s in sets]


def run_timed(cmd: list[str], cwd: str, log_path: str, timeout: float | None):
  """Runs ``cmd``, echoing and timestamping its output lines as they come.

  Returns:
    (returncode or None when stopped, wall seconds, [(seconds since start, line)], why stopped
    or None).
  """
  lines, t0 = [], time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, bufsize=1,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})

  def read():
    with open(log_path, "w") as log:
      for line in proc.stdout:
        t = time.perf_counter() - t0
        lines.append((t, line.rstrip("\n")))
        log.write(f"{t:9.3f} {line}")
        log.flush()
        print(f"  {t:7.1f}s | {line}", end="", file=sys.stderr, flush=True)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  stopped = None
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    stopped = f"timeout after {timeout:g} s"
  except Interrupted:
    stopped = "interrupted (SIGTERM)"
  except KeyboardInterrupt:
    stopped = "interrupted (SIGINT)"
  finally:
    if proc.poll() is None:
      proc.terminate()
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
  wall = time.perf_counter() - t0
  reader.join(timeout=5)
  return (None if stopped else proc.returncode), wall, lines, stopped


def read_metrics(workdir: str) -> list[dict]:
  """The run's train records (metrics.jsonl), a torn last line ignored."""
  path = os.path.join(workdir, "metrics.jsonl")
  recs = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if rec.get("kind") == "train":
          recs.append(rec)
  return recs


def step_times(recs: list[dict], batch: int) -> dict:
  """First step and steps 2..N from the metrics' throughput intervals.

  The run's throughput clock starts after the first step (compiled and finished), so the first
  record's interval holds steps 2..step and every later one the steps since the previous record.
  """
  out = {"first_step_s": None, "steps_s": None, "timed_steps": 0}
  if not recs:
    return out
  out["first_step_s"] = recs[0].get("first_step_s")
  total, steps, prev = 0.0, 0, 1
  for r in recs:
    ds, rate = r["step"] - prev, r.get("samples_per_s")
    prev = r["step"]
    if ds > 0 and rate and np.isfinite(rate) and rate > 0:
      total += ds * batch / rate
      steps += ds
  if steps:
    out.update(steps_s=total, timed_steps=steps, step_s=total / steps,
               samples_per_s=batch * steps / total)
  return out


def log_times(lines: list[tuple[float, str]]) -> dict:
  """Start-up and end-of-run times from the timestamped log lines."""
  out = {}
  progress = [t for t, line in lines if _PROGRESS.search(line)]
  for t, line in lines:
    if "startup_s" not in out and _ANNOUNCE.search(line):
      out["startup_s"] = t
    if _DONE.search(line):
      out["done_at_s"] = t
      if progress:
        out["finish_s"] = t - progress[-1]
  out["neighbors_cache_hit"] = any("neighbours" in line and "cache hit" in line
                                   for _, line in lines)
  return out


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n)))


def summarize(args, res: dict, workdir: str, lines, batch: int) -> None:
  """Adds the metrics, log and workdir facts to ``res`` (in place)."""
  recs = read_metrics(workdir)
  res.update(step_times(recs, batch))
  res.update(log_times(lines))
  spe = res["steps_per_epoch"]
  res["steps_done"] = recs[-1]["step"] if recs else 0
  res["samples_trained"] = res["steps_done"] * batch
  if res.get("step_s"):
    res["epoch_s"] = res["step_s"] * spe
  if recs:
    res["final_loss"] = recs[-1].get("loss")
    res["skipped_steps"] = recs[-1].get("skipped")
  res["checkpoint_steps"] = checkpoint_steps(workdir)
  res["checkpoint_exists"] = spe in res["checkpoint_steps"]
  res["export_exists"] = os.path.isfile(os.path.join(workdir, "state_dict.npz"))
  try:
    with open(os.path.join(workdir, "run.json")) as f:
      run = json.load(f)
    res["devices"] = run.get("devices")
    res["versions"] = run.get("versions")
  except (OSError, ValueError):
    pass


def fmt(v, spec: str = ".1f") -> str:
  return format(v, spec) if isinstance(v, (int, float)) else "-"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--samples", type=int, default=None, help="training images (default 91642)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default 256)")
  p.add_argument("--k", type=int, default=None, help="tokens per training sample (default 512)")
  p.add_argument("--dim", type=int, default=None, help="descriptor size C (default 2048)")
  p.add_argument("--config", default="rsfm120k", help="the training config (the paper's)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="another --config.KEY=VALUE for csa-jax train (repeatable)")
  p.add_argument("--neighbors", choices=("planted", "compute"), default="planted",
                 help="plant the neighbour lists in the cache, or let csa-jax train compute them")
  p.add_argument("--out", default="bench_epoch.json", help="the JSON results")
  p.add_argument("--dir", default=None, help="where the temporary directory goes")
  p.add_argument("--keep", action="store_true", help="keep the data and the run's workdir")
  p.add_argument("--timeout", type=float, default=0,
                 help="stop csa-jax train after this many seconds (0: never); the JSON is "
                 "still written")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tiny", action="store_true",
                 help="configs/tiny.py's model, 200 samples, batch 16, K=8: seconds on a CPU")
  args = p.parse_args(argv)
  sizes = TINY if args.tiny else PAPER
  for key, default in sizes.items():
    if getattr(args, key) is None:
      setattr(args, key, default)
  for key in ("samples", "batch", "k", "dim"):
    if getattr(args, key) < 1:
      p.error(f"--{key} must be >= 1")
  if args.batch > args.samples:
    p.error("--batch must be at most --samples")
  signal.signal(signal.SIGTERM, _on_sigterm)

  if args.dir:
    os.makedirs(args.dir, exist_ok=True)
  base = tempfile.mkdtemp(prefix="bench_epoch_", dir=args.dir)
  root, workdir = os.path.join(base, "data"), os.path.join(base, "run")
  spe = args.samples // args.batch
  res = {"tool": "bench_epoch", "mode": "tiny" if args.tiny else "full", "status": "failed",
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "config": args.config, "samples": args.samples, "batch": args.batch, "K": args.k,
         "descriptor_dim": args.dim, "sets": (list(TINY_SETS) if args.tiny else []) + args.set,
         "steps_per_epoch": spe, "epoch_samples": spe * args.batch,
         "dropped_samples": args.samples - spe * args.batch, "neighbors": args.neighbors,
         "dir": base if args.keep else None}
  code = 1
  try:
    t0 = time.perf_counter()
    files = write_dataset(root, args.samples, args.dim, args.seed)
    L = _anchors(args)
    res["L"] = L
    if args.neighbors == "planted":
      plant_neighbor_cache(files["descriptors"], os.path.join(root, "neighbors"), args.k, L)
    res["generate_s"] = time.perf_counter() - t0
    say(f"data: {args.samples} x {args.dim} descriptors in {res['generate_s']:.1f} s ({root})")
    cmd = train_command(args, root, workdir)
    res["command"] = cmd[1:]
    rc, wall, lines, stopped = run_timed(cmd, base, os.path.join(base, "train.log"),
                                         args.timeout or None)
    res.update(returncode=rc, wall_s=wall)
    if stopped:
      res["stopped"] = stopped
    summarize(args, res, workdir, lines, args.batch)
    ok = (rc == 0 and res["samples_trained"] == res["epoch_samples"]
          and res["checkpoint_exists"])
    res["status"] = "ok" if ok else ("failed" if not stopped else
                                     "timeout" if stopped.startswith("timeout") else "stopped")
    if not ok:
      res["log_tail"] = [line for _, line in lines[-15:]]
    code = 0 if ok else 1
  except Interrupted:
    res["stopped"] = "interrupted (SIGTERM)"
    res["status"] = "stopped"
  finally:
    _write_json(args.out, res)
    if not args.keep:
      shutil.rmtree(base, ignore_errors=True)
  print(f"bench_epoch: {res['status']}: {res['samples']} samples, batch {res['batch']}, "
        f"K={res['K']}: {res.get('samples_trained', 0)} trained in {fmt(res.get('wall_s'))} s "
        f"wall (start-up {fmt(res.get('startup_s'))} s, first step {fmt(res.get('first_step_s'))}"
        f" s, epoch {fmt(res.get('epoch_s'))} s at {fmt(res.get('samples_per_s'), '.0f')} "
        f"samples/s, checkpoint+export {fmt(res.get('finish_s'))} s) -> {args.out}")
  return code


def _on_sigterm(signum, frame):
  # `timeout` signals this process and then its whole group: the first signal stops the run, the
  # rest are ignored so that the results are still written.
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  raise Interrupted()


def _anchors(args) -> int:
  """L: the config's model.anchors after the --set overrides (and --tiny's)."""
  for s in reversed((list(TINY_SETS) if args.tiny else []) + args.set):
    key, _, value = s.partition("=")
    if key.strip() == "model.anchors":
      return int(value)
  try:
    from csa_jax import configs  # noqa: PLC0415
    return int(configs.load_file(args.config).model.anchors)
  except ImportError:  # a checkout on PYTHONPATH: csa_jax.configs exists once installed
    import runpy  # noqa: PLC0415
    path = args.config if os.path.isfile(args.config) else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
        args.config.removesuffix(".py") + ".py")
    return int(runpy.run_path(path)["get_config"]().model.anchors)


def _write_json(path: str, res: dict) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1, allow_nan=True)
    f.write("\n")
  os.replace(tmp, path)


if __name__ == "__main__":
  sys.exit(main())
