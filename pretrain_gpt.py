"""Pretrain a GPT-2 code model with DeepSpeed.

    deepspeed --hostfile hosts pretrain_gpt.py --config run.json --ds_config ds_configs/zero2.json
    deepspeed --num_gpus 8 pretrain_gpt.py --config run.json --ds_config ds_configs/zero3.json
    python pretrain_gpt.py --ds_config ds_configs/zero2_cpu.json --set train.max_steps=20     # one rank

Config: defaults, then --config (JSON with sections model, data, optim, train), then --set overrides
(`--set optim.lr=3e-4 model.n_layer=4`). The DeepSpeed JSON owns the ZeRO stage and its tuning; the run
fills micro batch, accumulation, global batch, precision and clipping, and refuses contradictions.
Everything is validated before an engine is built. Checkpoints in train.save_dir resume automatically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cmdline.args import OneLineParser, positive_int
from cmdline.logs import setup_logging
from launch.env import LaunchEnv, LaunchError, finalize_mpi
from training.config import ConfigError, load_run_config

logger = logging.getLogger("pretrain_gpt")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(
        prog="pretrain_gpt.py",
        description=__doc__,
        example="deepspeed --num_gpus 2 pretrain_gpt.py --config configs/demo.json --ds_config "
        "ds_configs/zero2_cpu.json\n"
        "python pretrain_gpt.py --config configs/codeparrot_zero2.json --ds_config ds_configs/zero2.json "
        "--dry-run --world 16 --device cuda   # the layout only",
    )
    p.add_argument("--config", help="run config JSON (sections: model, data, optim, train)")
    p.add_argument(
        "--ds_config",
        "--deepspeed_config",
        dest="ds_config",
        default="ds_configs/zero2_cpu.json",
        help="DeepSpeed JSON (default: ds_configs/zero2_cpu.json)",
    )
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.max_steps=10"
    )
    p.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even if resume settings, data or tokenizer differ from the checkpoint's",
    )
    p.add_argument(
        "--resume-from",
        metavar="TAG",
        help="resume from this checkpoint tag of train.save_dir (e.g. global_step400) instead of `latest`",
    )
    p.add_argument(
        "--no-verify-data",
        action="store_true",
        help="skip checking the shards against their manifests' sha256 before training",
    )
    p.add_argument(
        "--cpu-shm-allreduce",
        action="store_true",
        help="on CPU, build DeepSpeed's shared-memory all-reduce op (a 40-90 s compile)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the layout (world, stages and their layers, batch arithmetic) without "
        "starting an engine",
    )
    p.add_argument("--world", type=positive_int, help="with --dry-run: the number of ranks to lay out")
    p.add_argument(
        "--ranks-per-node", type=positive_int, default=8, help="with --dry-run: ranks per node (8)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="with --dry-run: the device to lay out for")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def preflight(args: argparse.Namespace, world: int, device_type: str):
    """Everything checkable from the config, the DeepSpeed JSON and the data, before any collective: the
    run config and the resolved model, DeepSpeed config and precision. Raises ConfigError."""
    from training.validate import load_ds_config, validate

    run = load_run_config(args.config, args.set)
    ds_json = load_ds_config(args.ds_config)
    return run, validate(run, ds_json, args.ds_config, world, device_type)


def main(argv: Sequence[str] | None = None) -> int:
    """Expected failures (a bad config, unusable data or save_dir, a damaged or mismatching checkpoint,
    another run in the save_dir) reach the user once, from rank 0, as one paragraph, with exit status 2,
    before any engine is built. Unexpected errors keep their traceback."""
    from training.stop import StopRequest

    stop = StopRequest()  # first of all: a SIGTERM, SIGUSR1 or Ctrl-C during start-up is kept, not fatal
    args = parse_args(argv)
    try:
        launch = LaunchEnv.read()
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging(args.verbose, rank=launch.rank)
    logger.info("launch: %s", launch.describe())
    if args.dry_run:
        return dry_run(args, launch)
    run = setup = None
    try:
        run, setup = preflight(args, launch.world, launch.device_type)
        problems: list[str] = []
    except ConfigError as e:
        problems = e.problems
    if run is not None and setup is not None:
        # Before the process group: hashing a large dataset takes longer than a collective may wait. Every
        # rank calls it; one process per filesystem hashes, the others wait for its record.
        from training.startup import verify_data

        problems += verify_data(
            setup.data,
            setup.model.vocab_size,
            full=not args.no_verify_data,
            fim=run.data.fim_rate > 0,
        )
    if launch.world == 1 and problems:  # nothing to agree with: say it without starting torch.distributed
        return _refuse(problems, launch.rank)
    launch.init_distributed(args.cpu_shm_allreduce, run.train.dist_timeout_s if run else None)
    from training.startup import agreed_problems

    problems = agreed_problems(problems)
    if problems:
        return _refuse(problems, launch.rank)
    return train(run, setup, args, launch, stop)


def dry_run(args: argparse.Namespace, launch: LaunchEnv) -> int:
    from training.dry_run import layout_text

    world, device = args.world or launch.world, args.device or launch.device_type
    try:
        run, setup = preflight(args, world, device)
    except ConfigError as e:
        return _refuse(e.problems, 0)
    print(layout_text(run, setup, world, args.ranks_per_node, device))
    return 0


def _refuse(problems: list[str], rank: int) -> int:
    if rank == 0:
        print(f"error: {ConfigError(problems)}", file=sys.stderr)
    return 2


def train(run, setup, args: argparse.Namespace, launch: LaunchEnv, stop) -> int:
    import torch.distributed as dist

    from training import startup
    from training.checkpoint import resume_key, seed_everything, write_run_files
    from training.engine import build_engine
    from training.loop import RankLost, Trainer, TrainingAborted
    from training.run_lock import RunLock

    rank = dist.get_rank()
    setup = startup.agree_on_precision(run, setup, args.ds_config, launch.device_type, args.resume_from)
    seed_everything(run.train.seed + 1000 * rank)  # a resume then restores each rank's saved state
    expected = resume_key(run, setup)
    lock = RunLock(Path(run.train.save_dir))
    try:
        try:
            resume_point = startup.prepare_run_dir(
                run,
                setup.dp_size,
                expected,
                lock,
                args.force_resume,
                args.resume_from,
            )
        except ConfigError as e:
            return _refuse(e.problems, rank)
        if resume_point is not None and resume_point.universal:
            problems = startup.switch_to_universal(resume_point, run, setup)
            if problems:
                return _refuse(problems, rank)
        if rank == 0:
            write_run_files(run, setup)
        engine = build_engine(
            run, setup.model, setup.ds_config, setup.zero_stage, setup.total_steps, launch.device_type
        )
        try:
            trainer = Trainer(run, setup, engine, expected, resume_point)
            result = trainer.fit(stop)
        except (ConfigError, RankLost) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except TrainingAborted as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        logger.info("done: %s", json.dumps(result))
        dist.barrier()
    finally:
        lock.release()
    dist.destroy_process_group()
    return 0


def _exit_now(code: int) -> None:
    """Leave without running C++ static destructors. After ZeRO-3 (seen with optimizer or parameter offload
    on CPU ranks) a library thread can still be joinable at interpreter exit, and its destructor calls
    std::terminate ("terminate called without an active exception", SIGABRT) although the run finished
    and saved. Everything of ours is flushed and closed by now. MPI, if mpi4py started it, is finalized:
    mpirun counts a rank that exits without MPI_Finalize as failed."""
    finalize_mpi()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
