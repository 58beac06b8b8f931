"""``csa-jax train --config configs/<name>.py [--config.key=value ...] --workdir DIR [--resume]``.

Multi-host: start the same command on every host with ``--coordinator-address HOST:PORT
--num-processes P --process-id I`` (or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or ``--distributed`` to let JAX detect a cluster (SLURM,
Open MPI, Kubernetes, Cloud TPU). On CPU the processes talk through gloo.
"""

from __future__ import annotations

import argparse
import os
import sys

from csa_jax import configs
from csa_jax.parallel import init_distributed


def main(argv: list[str]) -> int:
  config_path, overrides, rest = configs.split_flags(argv)
  p = argparse.ArgumentParser(
      prog="csa-jax train", description="Train CSA from a config file. Override any config "
      "value with --config.<key>=<value> (e.g. --config.train.epochs=10). "
      "--config.log.profile_steps=A:B traces steps A to B with jax.profiler into <workdir>/profile "
      "(--config.log.profile_dir=DIR elsewhere); TensorBoard: tensorboard --logdir <workdir>.")
  # Parsed by configs.split_flags before argparse; declared here for --help.
  p.add_argument("--config", metavar="NAME|FILE", dest="_config",
                 help="a shipped config (tiny, synthetic, rsfm120k, rsfm120k_aug) or a config "
                 "file; then any --config.<key>=<value>")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics, plots, final model")
  p.add_argument("--resume", action="store_true",
                 help="continue from the latest checkpoint in --workdir")
  p.add_argument("--allow-config-change", action="store_true",
                 help="with --resume: go on with hyper-parameters that differ from the saved "
                 "run's (each change is reported; the model's shape, batch and seed never change)")
  # Hyphenated like every other flag; the underscore spellings of earlier versions still work.
  p.add_argument("--coordinator-address", "--coordinator_address", dest="coordinator_address",
                 default=None, metavar="HOST:PORT", help="address of process 0")
  p.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int,
                 default=None, metavar="P", help="processes in all")
  p.add_argument("--process-id", "--process_id", dest="process_id", type=int, default=None,
                 metavar="I", help="this process's index, 0..P-1")
  p.add_argument("--distributed", action="store_true",
                 help="jax.distributed.initialize() with cluster auto-detection")
  p.add_argument("--no-progress", dest="progress", action="store_false",
                 help="no progress line on stderr")
  args = p.parse_args(rest)
  if config_path is None:
    p.error("--config NAME|FILE is required")
  config = configs.load(config_path, overrides)
  init_distributed(args.coordinator_address, args.num_processes, args.process_id,
                   auto=args.distributed)

  from csa_jax.train.loop import train
  if args.allow_config_change and not args.resume:
    p.error("--allow-config-change only applies with --resume")
  result = train(config, args.workdir, resume=args.resume, progress=args.progress,
                 command_argv=["csa-jax", "train", *argv],
                 allow_config_change=args.allow_config_change)
  print(f"trained {result.step} steps ({result.skipped} skipped): "
        f"{os.path.join(result.workdir, 'state_dict.npz')}", file=sys.stderr)
  return 0
