"""DeepSpeed checkpoints that resume exactly, and never leave a half-written one chosen.

Layout under `save_dir`: one DeepSpeed tag directory per save (`global_stepN/`, with each rank's
`rng_rankNNNNN.pt`), and our own `latest` file naming the newest complete tag. `latest` is written by rank 0
only after a barrier that every rank reaches once its files are written, then renamed into place: a crash
mid-save leaves the previous checkpoint intact and chosen. The last `keep_last` tags are kept. A save
into a tag that exists (a run resumed from an older tag) first moves `latest` off it and removes it.

A tag is complete once rank 0 wrote `files.json` (each file's size and CRC-32, summed by all ranks after
the save) and then `COMPLETE`. A resume checks sizes and sums before loading anything, so a truncated file
or one whose bytes changed at the same size is named, with the complete tags to resume from instead.

Client state: step, consumed samples and tokens, the run's resume settings (`RunConfig.resume_values`:
model, optimizer, batch, seed, resolved precision), and the hashes of the tokenizer and data manifests. A
resume that differs in any of them is refused, naming each difference, unless forced.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import pickle
import random
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from data_tools.atomic import write_atomic
from training.config import ConfigError, RunConfig
from training.run_files import DS_CONFIG, RUN_CONFIG

if TYPE_CHECKING:
    from training.validate import RunSetup

logger = logging.getLogger(__name__)

LATEST = "latest"
CLIENT_STATE = "client_state.json"
FILES = "files.json"  # each file's size and CRC-32 at save time, to tell a damaged checkpoint before loading
CHECKSUM_CHUNK = 8 * 2**20  # bytes read per call: large enough that the CRC, not Python, sets the speed
COMPLETE = "COMPLETE"  # written by rank 0 once every rank's files are in place, before `latest` moves
UNIVERSAL_SUFFIX = "_universal"


def write_run_files(run: RunConfig, setup: RunSetup) -> None:
    """Rank 0: `RUN_CONFIG` and `DS_CONFIG` into train.save_dir (what export and evaluation read)."""
    save_dir = Path(run.train.save_dir)
    resolved = {"model": setup.model.to_dict(), "precision": setup.precision.precision}
    write_atomic(save_dir / RUN_CONFIG, json.dumps({**run.to_dict(), "resolved": resolved}, indent=2))
    write_atomic(save_dir / DS_CONFIG, json.dumps(setup.ds_config, indent=2))


def resume_key(run: RunConfig, setup: RunSetup) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (find_resume_point): the resume settings, the
    tokenizer and the data (hashes from the manifests validation read), and the data paths."""
    from data_tools.manifest import manifest_hash

    return {
        "resume_config": run.resume_values(setup.precision.precision),
        "tokenizer": ",".join(d.tokenizer_sha256[:16] for d in setup.data),
        "data_manifest": ",".join(manifest_hash(d)[:16] for d in setup.data),
        "data_paths": list(run.data.paths),
    }


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) of this process; callers add the rank so that ranks
    draw different dropout masks, reproducibly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _out_of_space(error: BaseException, save_dir: Path) -> bool:
    """A write failed for want of space: ENOSPC, or one of the errors torch's C++ zip writer raises
    instead ("basic_ios::clear: iostream error", "[enforce fail at inline_container.cc] unexpected pos")
    on a disk that is (nearly) full."""
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
        return True
    try:
        return isinstance(error, RuntimeError) and shutil.disk_usage(save_dir).free < 64 * 2**20
    except OSError:
        return False


def _disk_full_message(save_dir: Path, tag: str) -> str:
    try:
        free = f"{shutil.disk_usage(save_dir).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    done = latest_tag(save_dir)
    safe = (
        f"the last complete checkpoint {save_dir / done} (step {tag_step(done)}) is "
        f"intact and `latest` still names it; rerun the same command once there is room and it resumes "
        f"from there"
        if done
        else "no checkpoint was completed yet; rerun once there is room and training starts afresh"
    )
    return (
        f"no space left on the device of train.save_dir {save_dir} ({free}) while saving {tag}. "
        f"Safe: {safe}. Free space there, or move {save_dir} to a larger disk and point train.save_dir at it"
    )


def tag_step(tag: str) -> int | None:
    """The step of a checkpoint tag (`global_step400` -> 400), None for any other name."""
    digits = tag.removeprefix("global_step")
    return int(digits) if digits != tag and digits.isdigit() else None


def latest_tag(save_dir: Path) -> str | None:
    path = save_dir / LATEST
    return path.read_text().strip() if path.exists() else None


def saved_precision(save_dir: Path, resume_from: str | None) -> tuple[str, str] | None:
    """(tag, precision) of the checkpoint a run in `save_dir` would resume (`resume_from`, else `latest`),
    from its client state; None when there is none or it cannot be read (find_resume_point says why)."""
    tag = resume_from or latest_tag(save_dir)
    if tag is None:
        return None
    try:
        client = json.loads((save_dir / tag / CLIENT_STATE).read_text())
        return tag, str(client["resume_config"]["train.precision"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(engine: Any, save_dir: Path, step: int, client_state: dict[str, Any], keep_last: int) -> str:
    """Collective: every rank writes its part, then rank 0 moves `latest` and prunes old tags."""
    tag = f"global_step{step}"
    rank = dist.get_rank()
    if rank == 0:
        _clear_tag(save_dir, tag)
    dist.barrier()  # no rank writes into the tag before its old marker and files are gone
    try:
        engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)
        (save_dir / tag).mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), save_dir / tag / f"rng_rank{rank:05d}.pt")
        if rank == 0:  # readable before any weights are loaded (a resume checks it first)
            (save_dir / tag / CLIENT_STATE).write_text(json.dumps(client_state, indent=2) + "\n")
    except (OSError, RuntimeError) as e:
        if not _out_of_space(e, save_dir):
            raise
        shutil.rmtree(save_dir / tag, ignore_errors=True)  # half written, never chosen: give the space back
        raise ConfigError([_disk_full_message(save_dir, tag)]) from e
    dist.barrier()  # every rank's files are complete
    record = _file_record(save_dir / tag)
    if rank == 0:
        _write_file_record(save_dir / tag, record)
        _write_latest(save_dir, tag)
        for broken in save_dir.glob("global_step*"):  # saves that crashed before completing
            broken_step = tag_step(broken.name)
            if broken_step is not None and broken_step < step and not (broken / COMPLETE).exists():
                shutil.rmtree(broken, ignore_errors=True)
        tags = complete_tags(save_dir)
        for old in tags[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(save_dir / old, ignore_errors=True)
            shutil.rmtree(save_dir / f"{old}{UNIVERSAL_SUFFIX}", ignore_errors=True)
    dist.barrier()
    logger.info("saved checkpoint %s", save_dir / tag)
    return tag


def _clear_tag(save_dir: Path, tag: str) -> None:
    """Rank 0, before a save into `tag`: a tag of that name from an earlier save (a run resumed with
    `--resume-from` an older tag, keep_last 0) is removed with its universal conversion, after `latest`
    was moved to the newest other complete tag. A crash mid-save then leaves a tag without COMPLETE (never
    chosen) and `latest` on a checkpoint that is whole, instead of old COMPLETE and files.json over a mix
    of old and new files of equal sizes."""
    if not (save_dir / tag).exists():
        return
    others = [t for t in complete_tags(save_dir) if t != tag]
    if latest_tag(save_dir) == tag:
        if others:
            _write_latest(save_dir, others[-1])
        else:
            (save_dir / LATEST).unlink(missing_ok=True)
    logger.info("replacing the checkpoint %s of an earlier save", save_dir / tag)
    (save_dir / tag / COMPLETE).unlink(missing_ok=True)  # first: a crash in rmtree leaves it incomplete
    shutil.rmtree(save_dir / tag)
    shutil.rmtree(save_dir / f"{tag}{UNIVERSAL_SUFFIX}", ignore_errors=True)


def _write_latest(save_dir: Path, tag: str) -> None:
    write_atomic(save_dir / LATEST, tag + "\n", unique=True)


# Resume settings added after checkpoints were written without them: what those runs did.
SETTINGS_BEFORE_RECORDED = {"data.fim_rate": 0.0, "data.fim_spm_rate": 0.5}


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What a checkpoint's client state and the resuming run disagree on, one phrase each: every setting of
    `RunConfig.resume_values` with its old and new value, the data (manifest hashes) and the tokenizer."""
    out = []
    old_cfg, new_cfg = saved.get("resume_config"), now["resume_config"]
    if old_cfg is None:
        out.append("settings (the checkpoint predates per-setting records, so they cannot be compared)")
    else:
        old_cfg = {**SETTINGS_BEFORE_RECORDED, **old_cfg}
        for key in sorted(set(old_cfg) | set(new_cfg)):
            if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
                old, new = json.dumps(old_cfg.get(key)), json.dumps(new_cfg.get(key))
                out.append(f"{key}: {old} in the checkpoint, {new} now")
    if saved.get("data_manifest") != now["data_manifest"]:
        out.append(
            f"the data: manifest hashes {saved.get('data_manifest')} of {saved.get('data_paths')} in the "
            f"checkpoint, {now['data_manifest']} of {now['data_paths']} now"
        )
    if saved.get("tokenizer") != now["tokenizer"]:
        out.append(f"the tokenizer: {saved.get('tokenizer')} in the checkpoint, {now['tokenizer']} now")
    return out


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from: its tag and client state, and this run's data-parallel size."""

    save_dir: Path
    tag: str
    client: dict[str, Any]
    dp_size: int

    @property
    def saved_dp_size(self) -> int:
        return self.client.get("dp_size", self.dp_size)

    @property
    def universal(self) -> bool:
        """Saved with another data-parallel size: it loads through DeepSpeed's universal checkpoint."""
        return self.saved_dp_size != self.dp_size

    @property
    def universal_tag(self) -> str:
        return f"{self.tag}{UNIVERSAL_SUFFIX}"


def file_checksum(path: Path) -> str:
    """CRC-32 (zlib) of a file, as 8 hex digits. Chosen for speed over sha256: it is there to catch
    accidental damage (flipped bits, a file half rewritten at its old size), not tampering, and zlib's
    CRC-32 ran at twice sha256's speed here (bench/checkpoint_checksum.py). zlib releases the GIL while
    it sums, so threads hash files in parallel."""
    crc, buf = 0, bytearray(CHECKSUM_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def checksums(paths: list[Path], threads: int | None = None) -> list[str]:
    """`file_checksum` of each path, summed by `threads` threads (default: one per core, at most 8)."""
    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(file_checksum, paths))


def _tag_files(tag_dir: Path) -> dict[str, int]:
    """Every file of a tag (but the record and marker) with its size, largest first."""
    files = [f for f in tag_dir.rglob("*") if f.is_file() and f.name not in (FILES, COMPLETE)]
    sizes = {str(f.relative_to(tag_dir)): f.stat().st_size for f in files}
    return dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))


def _file_record(tag_dir: Path) -> dict[str, dict[str, Any]]:
    """Collective, after every rank wrote: each file's size (listed by rank 0) and CRC-32, each rank
    summing every world-th file of the list (largest first), so a save's hashing is spread over the
    ranks. A file a rank does not see as rank 0 does (no shared filesystem) is summed by rank 0; only
    rank 0's return value is complete."""
    rank, world = dist.get_rank(), dist.get_world_size()
    box = [_tag_files(tag_dir) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    sizes: dict[str, int] = box[0]
    mine = {}
    for name in list(sizes)[rank::world]:
        path = tag_dir / name
        if path.is_file() and path.stat().st_size == sizes[name]:
            mine[name] = file_checksum(path)
    parts: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(parts, mine)
    sums = {name: crc for part in parts for name, crc in (part or {}).items()}
    if rank == 0:
        sums.update({name: file_checksum(tag_dir / name) for name in sizes if name not in sums})
    return {name: {"size": size, "crc32": sums.get(name, "")} for name, size in sorted(sizes.items())}


def _write_file_record(tag_dir: Path, record: dict[str, dict[str, Any]]) -> None:
    """Rank 0: each file's size and CRC-32, then the COMPLETE marker (see `complete_tags`)."""
    (tag_dir / FILES).write_text(json.dumps(record, indent=1) + "\n")
    (tag_dir / COMPLETE).write_text("")


def complete_tags(save_dir: Path) -> list[str]:
    """Tags whose save finished on every rank, oldest first."""
    tags = [
        p.name
        for p in save_dir.glob("global_step*")
        if (p / COMPLETE).exists() and tag_step(p.name) is not None
    ]
    return sorted(tags, key=tag_step)


def damaged_files(tag_dir: Path) -> list[str]:
    """Files of a complete checkpoint that are missing, or whose size or CRC-32 changed since the save
    (sizes first; then every file summed, in parallel threads). Records of older saves hold sizes only."""
    try:
        record = json.loads((tag_dir / FILES).read_text())
    except (OSError, json.JSONDecodeError):
        return [f"{tag_dir / FILES} (unreadable)"]
    out, to_sum = [], {}
    for name, entry in record.items():
        size, crc = (entry["size"], entry.get("crc32")) if isinstance(entry, dict) else (entry, None)
        path = tag_dir / name
        if not path.exists():
            out.append(f"{path} (missing)")
        elif path.stat().st_size != size:
            out.append(f"{path} ({path.stat().st_size} bytes, {size} when saved)")
        elif crc:
            to_sum[path] = crc
    if out:
        return out
    now = dict(zip(to_sum, checksums(list(to_sum)), strict=True))
    return [
        f"{path} (CRC-32 {now[path]}, {crc} when saved: its bytes changed at the same size)"
        for path, crc in to_sum.items()
        if now[path] != crc
    ]


def _choose_another(save_dir: Path, bad: str) -> str:
    others = [t for t in complete_tags(save_dir) if t != bad]
    if not others:
        return f"No other complete checkpoint is in {save_dir}: delete {save_dir} to start afresh"
    return (
        f"Complete checkpoints in {save_dir}: {', '.join(others)}. Resume from one with "
        f"`--resume-from {others[-1]}`, or delete {save_dir} to start afresh"
    )


def find_resume_point(
    save_dir: Path, expected: dict[str, Any], force: bool, resume_from: str | None, dp_size: int
) -> ResumePoint | None:
    """Which checkpoint to resume (`resume_from`, else `latest`; None: start afresh), checked before any
    engine exists: the tag is there and complete, its files have their saved sizes, and the run matches
    its resume settings, data and tokenizer (unless `force`). Raises ConfigError naming the problem."""
    tag = resume_from or latest_tag(save_dir)
    if tag is None:
        return None
    tag_dir = save_dir / tag
    source = f"--resume-from {tag}" if resume_from else f"{save_dir / LATEST} names {tag}, but"
    if not tag_dir.is_dir():
        raise ConfigError([f"{source} {tag_dir} does not exist. {_choose_another(save_dir, tag)}"])
    if not (tag_dir / COMPLETE).exists():
        state = "has no client_state.json" if not (tag_dir / CLIENT_STATE).exists() else "was never completed"
        raise ConfigError(
            [f"{tag_dir} {state}: not a complete checkpoint of this tool. {_choose_another(save_dir, tag)}"]
        )
    damaged = damaged_files(tag_dir)
    if damaged:
        raise ConfigError(
            [f"checkpoint {tag_dir} is damaged: {'; '.join(damaged)}. {_choose_another(save_dir, tag)}"]
        )
    client = json.loads((tag_dir / CLIENT_STATE).read_text())
    changed = resume_differences(client, expected)
    if changed and not force:
        raise ConfigError(
            [
                f"{tag_dir} was written by a run that differs from this one in:\n      "
                + "\n      ".join(changed)
                + "\n    Resume with the checkpoint's settings and data, pass --force-resume to resume with "
                "the new ones, or use a new train.save_dir to start afresh"
            ]
        )
    if changed:
        logger.warning("resuming despite differences (--force-resume): %s", "; ".join(changed))
    return ResumePoint(save_dir=save_dir, tag=tag, client=client, dp_size=dp_size)


def to_universal(point: ResumePoint) -> None:
    """Rank 0: convert a checkpoint saved with another data-parallel size into DeepSpeed's universal
    checkpoint (`<tag>_universal`, once; kept next to the original), which loads at any size."""
    out = point.save_dir / point.universal_tag
    if (out / COMPLETE).exists():
        return
    from deepspeed.checkpoint import ds_to_universal

    shutil.rmtree(out, ignore_errors=True)
    logger.info(
        "%s was saved with data-parallel size %s: converting it to a universal checkpoint in %s",
        point.tag,
        point.saved_dp_size,
        out,
    )
    args = argparse.Namespace(
        input_folder=str(point.save_dir / point.tag),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints; our log says what happens
        ds_to_universal.main(args)
    (out / COMPLETE).write_text("")


_SCHEDULED = ("params", "lr", "initial_lr")  # what a load or the schedule sets in a parameter group


def _param_groups(engine: Any) -> list[dict[str, Any]]:
    """The parameter groups of the torch optimizer inside DeepSpeed's ZeRO wrapper (or unwrapped)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer).param_groups


def _group_settings(engine: Any) -> list[dict[str, Any]]:
    """The optimizer's settings per parameter group (weight decay, betas, eps...), as the run built them."""
    return [{k: v for k, v in g.items() if k not in _SCHEDULED} for g in _param_groups(engine)]


def _repair_universal_load(engine: Any, groups: list[dict[str, Any]]) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal load (stage3.py,
    load_hp_checkpoint_state_from_checkpoint_dir_stage3), found by tests/training/test_resize.py:
      - it copies the first parameter group's settings into every group ("the hyperparameters of each
        parameter should be the same"), giving biases and LayerNorm weights weight decay: each group's
        settings are put back as the run built them (the resume check compared them with the checkpoint's);
      - it gives every parameter partition one shared Adam `step` tensor, which a fused or foreach Adam then
        advances once per partition at each step (2 after one step with 2 groups), skewing Adam's bias
        correction: each partition gets its own copy."""
    for group, settings in zip(_param_groups(engine), groups, strict=True):
        group.update(settings)
    state = getattr(engine.optimizer, "optimizer", engine.optimizer).state
    for entry in state.values():
        if isinstance(entry.get("step"), torch.Tensor):
            entry["step"] = entry["step"].clone()


def load(engine: Any, point: ResumePoint) -> dict[str, Any]:
    """Collective: load the planned checkpoint into the engine and restore this rank's RNG state."""
    save_dir, tag = point.save_dir, point.universal_tag if point.universal else point.tag
    groups = _group_settings(engine) if point.universal else []
    try:
        path, _ = engine.load_checkpoint(
            str(save_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError) as e:
        raise ConfigError(
            [f"{save_dir / tag}: DeepSpeed could not load it ({e}). {_choose_another(save_dir, point.tag)}"]
        ) from e
    if path is None:
        raise ConfigError(
            [f"{save_dir / tag}: DeepSpeed could not load it. {_choose_another(save_dir, point.tag)}"]
        )
    if point.universal:
        _repair_universal_load(engine, groups)
    rng_file = save_dir / point.tag / f"rng_rank{dist.get_rank():05d}.pt"
    if rng_file.exists() and not point.universal:
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("%s: not restored (data-parallel size changed): random state starts afresh", rng_file)
    via = " (universal checkpoint)" if point.universal else ""
    logger.info("resumed from %s at step %d%s", save_dir / point.tag, point.client["step"], via)
    return point.client
