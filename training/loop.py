"""The training loop: steps, evaluation, logging, checkpoints, signals and failure handling.

One `Trainer` per process. ZeRO engines step micro-batch by micro-batch (DeepSpeed accumulates and steps at
the boundary); pipeline engines take a whole step in `train_batch`. A non-finite loss still runs backward:
DeepSpeed's ZeRO and bf16 optimizers see the non-finite gradient norm, skip the update and clear the
gradients; the loop counts it, and `max_bad_steps` in a row abort the run.

Every `train.eval_interval` steps all ranks compute the validation loss; every `train.humaneval_interval`
steps rank 0 alone scores HumanEval pass@1 within its time budget (training/humaneval.py says how that
time is bounded, and why the other ranks waiting for it at their next collective stay within its timeout).
Both go into that step's record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)

from data_tools.atomic import write_atomic
from data_tools.processes import alive, process_start
from model.flops import flops_per_token
from training import checkpoint
from training.config import RunConfig
from training.data import Batch, RankData
from training.humaneval import HumanEvalHook, Score
from training.metrics import MetricsWriter, memory_gib, peak_flops
from training.stop import StopRequest
from training.validate import RunSetup

logger = logging.getLogger(__name__)


class TrainingAborted(RuntimeError):
    """The run cannot go on (repeated non-finite losses); the message says why and what to change."""


class RankLost(RuntimeError):
    """Another rank stopped (killed, crashed, its host lost) and a collective of this rank failed; the
    message names that rank where it can be known."""


RANKS_DIR = ".ranks"  # save_dir/.ranks/rankNNNNN.json: host, pid and start time of each rank of the run
_PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "gloo")


def peer_lost(error: BaseException) -> bool:
    """A collective failed because a peer went away (gloo's connection errors, NCCL's backend errors)."""
    return isinstance(error, dist.DistBackendError) or any(s in str(error) for s in _PEER_ERRORS)


def record_rank(save_dir: Path, rank: int) -> None:
    """Write this rank's host, pid and start time, so that a survivor can tell which rank stopped."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": process_start(os.getpid())}
    write_atomic(save_dir / RANKS_DIR / f"rank{rank:05d}.json", json.dumps(me), unique=True)


def lost_ranks_message(save_dir: Path, rank: int, step: int, error: BaseException) -> str:
    """Which rank stopped, from the rank records: a rank on this host whose process is gone or a zombie
    (looked for during up to 5 s: a killed process closes its sockets before it is seen dead); ranks on
    other hosts cannot be looked at from here and are listed instead."""
    deadline = time.monotonic() + 5.0
    dead, elsewhere = _dead_ranks(save_dir, rank)
    while not dead and time.monotonic() < deadline and _has_local_peers(save_dir, rank):
        time.sleep(0.1)
        dead, elsewhere = _dead_ranks(save_dir, rank)
    if dead:
        who = f"{', '.join(dead)} stopped (killed or crashed)"
    elif elsewhere:
        others = ", ".join(elsewhere)
        who = f"a rank on another host stopped (killed, crashed or its host lost; ranks {others})"
    else:
        who = "another rank stopped (killed or crashed)"
    done = checkpoint.latest_tag(save_dir)
    resume = f"the last complete checkpoint is {save_dir / done}" if done else "no checkpoint was completed"
    return (
        f"{who} during step {step}: rank {rank} lost its connection to it "
        f"({str(error).splitlines()[0][:160]}). That rank's own log (or the kernel's: `dmesg` for the OOM "
        f"killer) says why; {resume}: rerun the same command to resume from it"
    )


def _rank_records(save_dir: Path, rank: int) -> dict[int, dict[str, Any]]:
    out = {}
    for record in sorted((save_dir / RANKS_DIR).glob("rank*.json")):
        try:
            out[int(record.stem.removeprefix("rank"))] = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
    out.pop(rank, None)
    world = dist.get_world_size() if dist.is_initialized() else len(out) + 1
    return {r: info for r, info in out.items() if r < world}  # not the records of a larger earlier run


def _has_local_peers(save_dir: Path, rank: int) -> bool:
    host = socket.gethostname()
    return any(info.get("host") == host for info in _rank_records(save_dir, rank).values())


def _dead_ranks(save_dir: Path, rank: int) -> tuple[list[str], list[str]]:
    """(ranks of this host that are gone, ranks of other hosts), as phrases."""
    host, dead, elsewhere = socket.gethostname(), [], []
    for other, info in _rank_records(save_dir, rank).items():
        if info.get("host") != host:
            elsewhere.append(f"{other} ({info.get('host')})")
        elif not alive(int(info.get("pid", -1)), info.get("proc_start")):
            dead.append(f"rank {other} (pid {info.get('pid')} on {host})")
    return dead, elsewhere


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Collective: the mean of a scalar over all ranks (data-parallel ranks, without pipeline stages)."""
    dist.all_reduce(value)
    return value / dist.get_world_size()


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        setup: RunSetup,
        engine: Any,
        expected: dict[str, Any],
        resume: checkpoint.ResumePoint | None,
    ) -> None:
        self.run, self.setup, self.engine = run, setup, engine
        self.pipeline = run.train.pipeline_stages > 1
        self.device = engine.device
        self.rank = dist.get_rank()
        self.global_batch, self.total_steps, dp_size = setup.global_batch, setup.total_steps, setup.dp_size
        dp_rank = engine.grid.data_parallel_id if self.pipeline else self.rank
        self.data = RankData(run, dp_rank, dp_size, self.total_steps * self.global_batch, setup.data)
        self.save_dir = Path(run.train.save_dir)
        self.metrics = MetricsWriter(self.save_dir, enabled=self.rank == 0)
        # what a checkpoint must match to be resumed (see checkpoint.find_resume_point)
        self.expected = expected
        self.dp_size = dp_size
        client = checkpoint.load(engine, resume) if resume else None
        self.step = client["step"] if client else 0
        self.consumed = client["consumed_samples"] if client else 0
        self.skipped = client.get("skipped_steps", 0) if client else 0
        if resume and client:
            # Where this process took over: the step counter alone does not show it (a run stopped by a
            # signal resumes at the step it logged last). codeparrot-plot draws it.
            tokens = self.consumed * run.data.seq_len
            values = {"consumed_samples": self.consumed, "tokens": tokens, "tag": resume.tag}
            self.metrics.event(self.step, "resume", values)
        self.flops_per_token = flops_per_token(setup.model, run.data.seq_len)
        self.peak = peak_flops(setup.precision.precision, run.train.peak_tflops)
        self.humaneval = self._humaneval_hook() if run.train.humaneval_interval and self.rank == 0 else None

    # ---- one step ----------------------------------------------------------------------------------

    def _to_device(self, batch: Batch) -> Batch:
        return batch[0].to(self.device), batch[1].to(self.device)

    def _zero_step(self, it: Iterator[Batch]) -> torch.Tensor:
        losses = []
        for _ in range(self.setup.grad_accum):
            x, y = self._to_device(next(it))
            _, loss = self.engine(x, y)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        return _mean_over_ranks(torch.stack(losses).mean())

    def train_step(self, it: Iterator[Batch]) -> tuple[float, bool]:
        """Run one optimizer step; (mean loss over the global batch, whether the update was applied)."""
        if self.pipeline:
            loss = self.engine.train_batch(data_iter=(self._to_device(b) for b in it)).float()
        else:
            loss = self._zero_step(it)
        value = loss.item()
        applied = self.engine.was_step_applied() if hasattr(self.engine, "was_step_applied") else True
        if not math.isfinite(value) and applied:
            raise TrainingAborted(
                f"step {self.step + 1}: the loss is {value} and DeepSpeed applied the update anyway "
                "(ZeRO stage 0 in fp32 does not check gradients): the weights are now invalid. Use a ZeRO "
                "stage >= 1 or bf16, lower optim.lr, or resume from the last checkpoint"
            )
        return value, applied

    # ---- evaluation, logging, saving ---------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float | None:
        iters = self.run.train.eval_iters
        if self.data.valid is None or iters < 1:
            return None
        batches = (self._to_device(b) for b in self.data.valid_batches(iters))
        if self.pipeline:
            loss = self.engine.eval_batch(data_iter=batches, num_micro_batches=iters).float()
        else:
            self.engine.eval()
            losses = [self.engine(x, y)[1].float() for x, y in batches]
            self.engine.train()
            loss = _mean_over_ranks(torch.stack(losses).mean())
        return loss.item()

    def _humaneval_hook(self) -> HumanEvalHook:
        """Rank 0's HumanEval evaluator, with the tokenizer of the run's data (its first path's manifest
        names it; training.validate checked that every path shares it)."""
        from data_tools.manifest import dataset_tokenizer

        tok = dataset_tokenizer(self.setup.data[0])
        return HumanEvalHook(self.run.train, tok.tokenizer, tok.eod)

    def score_humaneval(self, stop: StopRequest) -> Score | None:
        """Rank 0: HumanEval pass@1 of the current weights (ZeRO 0-2 without pipeline: rank 0's module is
        whole). None on the other ranks, which go on to their next collective and wait there."""
        if self.humaneval is None:
            return None
        score = self.humaneval.score(self.engine.module, lambda: stop.signal is not None)
        if score is not None and score.judged < score.problems:
            logger.warning(
                "step %d: HumanEval judged %d of %d problems in %.1f s (train.humaneval_budget_s %s, or a "
                "stop signal): the others count as failed",
                self.step,
                score.judged,
                score.problems,
                score.seconds,
                self.run.train.humaneval_budget_s,
            )
        return score

    def _log(
        self, losses: list[float], seconds: float, eval_loss: float | None, humaneval: Score | None = None
    ) -> None:
        steps = len(losses)
        tokens_per_s = steps * self.global_batch * self.run.data.seq_len / max(seconds, 1e-9)
        tflops = tokens_per_s * self.flops_per_token / dist.get_world_size() / 1e12  # per device
        grad_norm = self.engine.get_global_grad_norm()
        values: dict[str, Any] = {
            "loss": sum(losses) / steps,
            "lr": self.engine.get_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens_per_s,
            "tflops_per_device": tflops,
            "memory_gib": memory_gib(),
            "consumed_samples": self.consumed,
            "skipped_steps": self.skipped,
        }
        if self.peak:
            values["mfu"] = tflops * 1e12 / self.peak
        if eval_loss is not None:
            values["valid_loss"] = eval_loss
            values["valid_ppl"] = math.exp(min(eval_loss, 50.0))
        if humaneval is not None:
            values.update(humaneval.metrics())
        self.metrics.write(self.step, values)
        mfu = f" | mfu {values['mfu']:.1%}" if "mfu" in values else ""
        gn = f"{values['grad_norm']:.3f}" if values["grad_norm"] is not None else "n/a"
        ev = f" | valid loss {eval_loss:.4f} ppl {values['valid_ppl']:.2f}" if eval_loss is not None else ""
        if humaneval is not None:
            ev += (
                f" | HumanEval pass@1 {humaneval.pass_at_1:.3f} ({humaneval.judged}/{humaneval.problems} "
                f"judged, {humaneval.seconds:.1f} s)"
            )
        logger.info(
            "step %d/%d | loss %.4f | lr %.3e | grad norm %s | %.0f tok/s | %.2f TFLOP/s/device%s"
            " | mem %.2f GiB%s",
            self.step,
            self.total_steps,
            values["loss"],
            values["lr"],
            gn,
            tokens_per_s,
            tflops,
            mfu,
            values["memory_gib"],
            ev,
        )

    def save(self) -> None:
        client = {
            "step": self.step,
            "consumed_samples": self.consumed,
            "skipped_steps": self.skipped,
            "consumed_tokens": self.consumed * self.run.data.seq_len,
            "dp_size": self.dp_size,
            # Marks the checkpoint convertible to DeepSpeed's universal format (another data-parallel size).
            UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
            **self.expected,
        }
        checkpoint.save(self.engine, self.save_dir, self.step, client, self.run.train.keep_last)

    # ---- the loop ----------------------------------------------------------------------------------

    def fit(self, stop: StopRequest) -> dict[str, Any]:
        """Train to the end (or a stop request); RankLost naming the rank when a peer went away."""
        record_rank(self.save_dir, self.rank)
        try:
            return self._fit(stop)
        except RuntimeError as e:
            if not peer_lost(e) or isinstance(e, (TrainingAborted, RankLost)):
                raise
            raise RankLost(lost_ranks_message(self.save_dir, self.rank, self.step + 1, e)) from e

    def _fit(self, stop: StopRequest) -> dict[str, Any]:
        t = self.run.train
        it = self.data.train_batches(self.consumed)
        window: list[float] = []
        bad_in_a_row = 0
        tick = time.perf_counter()
        while self.step < self.total_steps:
            loss, applied = self.train_step(it)
            self.step += 1
            self.consumed += self.global_batch
            if not applied:
                self.skipped += 1
                bad_in_a_row += 1
                logger.warning(
                    "step %d: non-finite loss (%s): update skipped (%d in a row, %d in all)",
                    self.step,
                    loss,
                    bad_in_a_row,
                    self.skipped,
                )
                if bad_in_a_row >= t.max_bad_steps:
                    raise TrainingAborted(
                        f"{bad_in_a_row} steps in a row had a non-finite loss (train.max_bad_steps = "
                        f"{t.max_bad_steps}); stopping at step {self.step}. Lower optim.lr or raise warmup, "
                        f"check the data, or resume from {self.save_dir} with other settings"
                    )
            else:
                bad_in_a_row = 0
                window.append(loss)
            eval_loss = self.evaluate() if t.eval_interval and self.step % t.eval_interval == 0 else None
            humaneval_due = t.humaneval_interval and self.step % t.humaneval_interval == 0
            humaneval = self.score_humaneval(stop) if humaneval_due else None
            if humaneval is not None:
                tick += humaneval.seconds  # not training time: tokens/s and MFU leave it out
            if window and (
                self.step % t.log_interval == 0
                or eval_loss is not None
                or humaneval_due
                or self.step == self.total_steps
            ):
                self._log(window, time.perf_counter() - tick, eval_loss, humaneval)
                window, tick = [], time.perf_counter()
            stopping = stop.agreed(self.device)
            if stopping or self.step % t.save_interval == 0 or self.step == self.total_steps:
                self.save()
            if stopping:
                logger.info("stop requested (signal %s): saved at step %d, exiting", stop.signal, self.step)
                break
        self.metrics.close()
        return {"step": self.step, "consumed_samples": self.consumed, "skipped_steps": self.skipped}
