"""HumanEval pass@1 during training (`train.humaneval_interval`): rank 0 completes the first
`train.humaneval_problems` problems greedily with the weights being trained and judges each completion in
the sandbox (evaluation/sandbox.py), within `train.humaneval_budget_s`.

How long it takes, at most. Rank 0 evaluates alone; the other ranks go on to their next collective and
wait for it there, so this is also how long they are held:

    humaneval_budget_s + one completion's generation + one program's sandbox timeout

- a problem is started only while the budget lasts (checked between problems, from the hook's start);
- its generation stops after `humaneval_max_new_tokens` tokens (one forward each, with the KV cache);
- its program is killed after the sandbox's wall-clock timeout (`Limits.timeout`, 3 s).
Problems not started count as failed, and the record says how many were judged. A stop signal (SIGTERM,
SIGUSR1, Ctrl-C) also ends it between problems, so a preempted run gets to its save. `training.validate`
keeps the budget at most half the collective timeout (`train.dist_timeout_s`, or DeepSpeed's 10 minutes),
so the waiting ranks' collective does not time out; the other half covers the last generation and program.

What it leaves as it was: the training. The module goes to eval mode and back (`evaluation.generate.complete`
does that), nothing records gradients, and the CPU and CUDA RNG states are saved and restored around it
(greedy decoding draws nothing, but a run with the hook must train as the same run without it, and its
resume bit for bit as before). ZeRO-3 and pipeline runs, whose rank 0 holds no whole model, are refused
by validation rather than gathered.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from evaluation.generate import complete
from evaluation.humaneval import build_program, load_problems
from evaluation.sandbox import Limits, Sandbox, SandboxUnavailable
from model.gpt2 import GPT
from training.config import TrainSection

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Score:
    """One evaluation: pass@1 over all `problems` (greedy, one completion each, so the share that passed;
    problems not judged within the budget count as failed)."""

    passed: int
    judged: int
    problems: int
    seconds: float  # wall clock of the whole evaluation

    @property
    def pass_at_1(self) -> float:
        return self.passed / self.problems

    def metrics(self) -> dict[str, float | int]:
        """The values logged with the step's record (metrics.jsonl and TensorBoard)."""
        return {
            "humaneval_pass@1": self.pass_at_1,
            "humaneval_judged": self.judged,
            "humaneval_problems": self.problems,
            "humaneval_seconds": self.seconds,
        }


class HumanEvalHook:
    """Rank 0's evaluator: the problems and the sandbox, made once, and the run's tokenizer
    (``tokenizers.Tokenizer``, see ``evaluation.checkpoint.run_tokenizer``) with its end-of-document id."""

    def __init__(self, train: TrainSection, tokenizer: Any, eod_id: int) -> None:
        self.problems = load_problems()[: train.humaneval_problems]
        self.tokenizer, self.eod_id = tokenizer, eod_id
        self.sandbox = Sandbox(Limits())  # refuses without isolation; validation said so at start-up
        self.max_new_tokens, self.budget_s = train.humaneval_max_new_tokens, train.humaneval_budget_s
        self.broken: str | None = None  # the sandbox failed mid-run: no further evaluation

    def score(self, model: GPT, stopped: Callable[[], bool]) -> Score | None:
        """Evaluate `model` (rank 0's whole module) within the budget; None once the sandbox has failed.
        `stopped`: whether a stop signal came (checked between problems)."""
        if self.broken is not None:
            return None
        start = time.monotonic()
        passed = judged = 0
        device = next(model.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            for problem in self.problems:
                if time.monotonic() - start >= self.budget_s or stopped():
                    break
                try:
                    passed += self._solves(model, problem)
                except SandboxUnavailable as e:
                    self.broken = str(e)
                    logger.error("HumanEval stops for the rest of the run: %s", e)
                    break
                judged += 1
        seconds = time.monotonic() - start
        return Score(passed=passed, judged=judged, problems=len(self.problems), seconds=seconds)

    def _solves(self, model: GPT, problem: dict) -> bool:
        [[completion]] = complete(
            model,
            self.tokenizer,
            [problem["prompt"]],
            max_new_tokens=self.max_new_tokens,
            temperature=0.0,
            eod_id=self.eod_id,
            long_prompts="keep-end",  # a small model's context still sees the end of the prompt
        )
        return self.sandbox.run(build_program(problem, completion)).passed
