"""DeepSpeed checkpoints that resume exactly, and never leave a half-written one chosen.

Layout under `save_dir`: one DeepSpeed tag directory per save (`global_stepN/`, with each rank's
`rng_rankNNNNN.pt`), and our own `latest` file naming the newest complete tag. `latest` is written by rank 0
only after a barrier that every rank reaches once its files are written, then renamed into place: a crash
mid-save leaves the previous checkpoint intact and chosen. The last `keep_last` tags are kept.

Client state: step, consumed samples and tokens, the run's resume settings (`RunConfig.resume_values`:
model, optimizer, batch, seed, resolved precision), and the hashes of the tokenizer and data manifests. A
resume that differs in any of them is refused, naming each difference, unless forced.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training.config import ConfigError

logger = logging.getLogger(__name__)

LATEST = "latest"
CLIENT_STATE = "client_state.json"


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


def latest_tag(save_dir: Path) -> str | None:
    path = save_dir / LATEST
    return path.read_text().strip() if path.exists() else None


def save(engine: Any, save_dir: Path, step: int, client_state: dict[str, Any], keep_last: int) -> str:
    """Collective: every rank writes its part, then rank 0 moves `latest` and prunes old tags."""
    tag = f"global_step{step}"
    rank = dist.get_rank()
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)
    (save_dir / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), save_dir / tag / f"rng_rank{rank:05d}.pt")
    if rank == 0:  # readable before any weights are loaded (a resume checks it first)
        (save_dir / tag / CLIENT_STATE).write_text(json.dumps(client_state, indent=2) + "\n")
    dist.barrier()  # every rank's files are complete
    if rank == 0:
        tmp = save_dir / f".{LATEST}.tmp"
        tmp.write_text(tag + "\n")
        os.replace(tmp, save_dir / LATEST)
        tags = sorted(
            (p for p in save_dir.glob("global_step*") if p.is_dir()),
            key=lambda p: int(p.name.removeprefix("global_step")),
        )
        for old in tags[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    logger.info("saved checkpoint %s", save_dir / tag)
    return tag


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What a checkpoint's client state and the resuming run disagree on, one phrase each: every setting of
    `RunConfig.resume_values` with its old and new value, the data (manifest hashes) and the tokenizer."""
    out = []
    old_cfg, new_cfg = saved.get("resume_config"), now["resume_config"]
    if old_cfg is None:
        out.append("settings (the checkpoint predates per-setting records, so they cannot be compared)")
    else:
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


def load(engine: Any, save_dir: Path, expected: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """Resume from `latest` if there is one: the client state, after comparing it with `expected` (before
    any weights are read, so a model of another shape gets this message, not a shape error)."""
    tag = latest_tag(save_dir)
    if tag is None:
        return None
    state_file = save_dir / tag / CLIENT_STATE
    if not state_file.exists():
        raise ConfigError(
            [
                f"{state_file}: missing, so {save_dir / tag} is not a complete checkpoint of this "
                f"tool. Delete {save_dir / LATEST} to start over, or point train.save_dir elsewhere"
            ]
        )
    client = json.loads(state_file.read_text())
    changed = resume_differences(client, expected)
    if changed and not force:
        raise ConfigError(
            [
                f"{save_dir / tag} was written by a run that differs from this one in:\n      "
                + "\n      ".join(changed)
                + "\n    Resume with the checkpoint's settings and data, pass --force-resume to resume with "
                "the new ones, or use a new train.save_dir to start afresh"
            ]
        )
    if changed:
        logger.warning("resuming despite differences (--force-resume): %s", "; ".join(changed))
    path, _ = engine.load_checkpoint(
        str(save_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise ConfigError(
            [
                f"{save_dir / tag}: DeepSpeed could not load this checkpoint. Delete "
                f"{save_dir / LATEST} to start over, or point train.save_dir elsewhere"
            ]
        )
    rng_file = save_dir / tag / f"rng_rank{dist.get_rank():05d}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("%s missing (world size changed?): random state not restored", rng_file)
    logger.info("resumed from %s at step %d", save_dir / tag, client["step"])
    return client
