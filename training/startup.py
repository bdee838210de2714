"""What `pretrain_gpt.py` does between validation and the engine, collectively on every rank: agree on
problems and on the precision, take the save_dir's lock, find the checkpoint to resume (and switch it to
DeepSpeed's universal checkpoint when the data-parallel size changed). Every expected failure here becomes
one ConfigError paragraph that rank 0 prints."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_tools.manifest import DatasetManifest
from training import checkpoint
from training.config import ConfigError, RunConfig
from training.run_lock import RunLock
from training.validate import RunSetup, load_ds_config, validate

logger = logging.getLogger(__name__)


def agreed_problems(problems: list[str]) -> list[str]:
    """Collective: every rank's problems, each once, in rank order (rank 0 reports them all)."""
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, problems)
    out: list[str] = []
    for rank, part in enumerate(gathered):
        for problem in part or []:
            text = problem if rank == 0 or problem in (gathered[0] or []) else f"(rank {rank}) {problem}"
            if text not in out and problem not in out:
                out.append(text)
    return out


def agree_on_precision(
    run: RunConfig, setup: RunSetup, ds_path: str, device_type: str, resume_from: str | None
) -> RunSetup:
    """Collective: every rank measured its device; all must train in one precision. If "auto" resolved
    differently on some rank (mixed hosts, or a measurement at the margin), every rank takes fp32. And
    "auto" chooses once per run, when it starts: a run resuming a checkpoint trains on in the checkpoint's
    precision (a checkpoint loads only into an engine of its own precision, and a measurement at the
    margin, 1.2x one day and 1.3x the next, must not refuse a resume). Rank 0 logs the choice, its reason
    and a warning for a bf16 that runs slowly here."""
    choice = setup.precision
    ranks_bf16 = torch.tensor([1.0 if choice.precision == "bf16" else 0.0])
    low, high = ranks_bf16.clone(), ranks_bf16.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        logger.warning(
            "train.precision auto resolved to bf16 on some ranks and fp32 on others (this rank: %s); "
            "training in fp32 on every rank. Set train.precision explicitly to choose",
            choice.reason,
        )
        setup = _with_precision(
            run, setup, ds_path, device_type, "fp32", "ranks disagreed on auto; fp32 everywhere"
        )
    if run.train.precision == "auto":
        setup = _checkpoint_precision(run, setup, ds_path, device_type, resume_from)
    choice = setup.precision
    logger.info("precision %s (train.precision %s): %s", choice.precision, choice.requested, choice.reason)
    if choice.warning and dist.get_rank() == 0:
        logger.warning("%s", choice.warning)
    return setup


def _with_precision(
    run: RunConfig, setup: RunSetup, ds_path: str, device_type: str, precision: str, reason: str
) -> RunSetup:
    """The run validated again as if train.precision were `precision` (the DeepSpeed config's bf16 section
    follows), still recorded as "auto" with `reason`."""
    fixed = dataclasses.replace(run, train=dataclasses.replace(run.train, precision=precision))
    again = validate(fixed, load_ds_config(ds_path), ds_path, dist.get_world_size(), device_type)
    choice = dataclasses.replace(again.precision, requested=run.train.precision, reason=reason)
    return dataclasses.replace(again, precision=choice)


def _checkpoint_precision(
    run: RunConfig, setup: RunSetup, ds_path: str, device_type: str, resume_from: str | None
) -> RunSetup:
    """Collective: `setup` with the precision of the checkpoint this run resumes (rank 0 reads it)."""
    box = [
        checkpoint.saved_precision(Path(run.train.save_dir), resume_from) if dist.get_rank() == 0 else None
    ]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None or box[0][1] == setup.precision.precision or box[0][1] not in ("fp32", "bf16"):
        return setup
    tag, saved = box[0]
    here = setup.precision
    reason = (
        f"the checkpoint {tag} this run resumes was trained in {saved}, and auto keeps a run's precision "
        f"(on its own, auto would take {here.precision} here: {here.reason})"
    )
    try:
        kept = _with_precision(run, setup, ds_path, device_type, saved, reason)
    except ConfigError:  # the DeepSpeed JSON enables the other precision: the resume check says so
        return setup
    if kept.precision.warning:
        warning = (
            f"{Path(run.train.save_dir) / tag} was trained in bf16, which runs slowly on this machine "
            f"({here.reason}). To train on in fp32, start a new train.save_dir with "
            f"train.init_from={Path(run.train.save_dir) / tag} and train.precision=fp32"
        )
        kept = dataclasses.replace(kept, precision=dataclasses.replace(kept.precision, warning=warning))
    return kept


def prepare_run_dir(
    run: RunConfig,
    dp_size: int,
    expected: dict[str, Any],
    lock: RunLock,
    force_resume: bool,
    resume_from: str | None,
) -> checkpoint.ResumePoint | None:
    """Collective, before any engine: rank 0 takes the save_dir's lock (refusing a second run before it
    writes anything) and finds the checkpoint to resume (complete, undamaged, matching). Every rank gets
    rank 0's resume point; a problem anywhere stops every rank (ConfigError). The data was verified before
    the process group started (verify_data)."""
    rank, problems, point = dist.get_rank(), [], None
    save_dir = Path(run.train.save_dir)
    if rank == 0:
        try:
            lock.acquire()
            point = checkpoint.find_resume_point(save_dir, expected, force_resume, resume_from, dp_size)
        except ConfigError as e:
            problems += e.problems
        except OSError as e:
            problems.append(
                f"train.save_dir {save_dir} cannot be used: {e.strerror or e} ({e.filename or save_dir}). "
                "Choose a directory this user can create and write, on a disk with free space"
            )
    problems = agreed_problems(problems)
    if problems:
        raise ConfigError(problems)
    box = [point]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def verify_data(
    datasets: Sequence[DatasetManifest], vocab_size: int, full: bool = True, fim: bool = False
) -> list[str]:
    """Every dataset's shards against its manifest's sha256 (`full`), on every rank before the process
    group starts: hashing 100 GB takes longer than a collective's timeout, so no rank may wait in one
    meanwhile. Only files changed since the last check are hashed, by one process per filesystem while the
    others wait for its record (data_tools.hashing). Always, even without `full`: the files' sizes, each
    index against its .bin and the largest token id against the model's `vocab_size`, which read no
    tokens, so a truncated shard is named before any engine is built. With `fim`, that each dataset's
    tokenizer has the fill-in-the-middle sentinels. Returns the problems (rank 0 reports them after init)."""
    from data_tools.errors import DataError
    from data_tools.fim import fim_ids
    from data_tools.manifest import check_shards, dataset_tokenizer, verify_dataset

    problems = []
    for data in datasets:
        try:
            if full:
                verify_dataset(data)
            check_shards(data, vocab_size)
            if fim:
                tok = dataset_tokenizer(data)
                fim_ids(tok.tokenizer, f"data.fim_rate > 0 but {data.path} was tokenized with {tok.dir}")
        except DataError as e:
            problems.append(str(e))
    return problems


def switch_to_universal(point: checkpoint.ResumePoint, run: RunConfig, setup: RunSetup) -> list[str]:
    """Collective: a checkpoint saved with another data-parallel size is converted (rank 0, once) to
    DeepSpeed's universal checkpoint, and the engine told to load that. Returns the problems where that
    cannot work (then nothing is converted)."""
    if run.train.pipeline_stages > 1 or setup.zero_stage not in (1, 2, 3):
        return [
            f"{point.save_dir / point.tag} was saved with data-parallel size {point.saved_dp_size}, "
            f"this run has {point.dp_size}: resuming at another size "
            "goes through DeepSpeed's universal checkpoint, supported here for ZeRO stage 1, 2 and 3 "
            f"without pipeline stages (this run: ZeRO {setup.zero_stage}, {run.train.pipeline_stages} "
            f"pipeline stage(s)). Resume with {point.saved_dp_size} data-parallel ranks"
        ]
    if dist.get_rank() == 0:
        checkpoint.to_universal(point)
    dist.barrier()
    setup.ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return []
