"""pretrain_gpt.py that also records the training state a resume must restore, for tests only; run it in
place of pretrain_gpt.py.

With PROBE_STEP=N in the environment, every rank joins in gathering the state (collectives), and rank 0
writes it with torch.save:
  save_dir/probe_saved.pt         right after the checkpoint of step N was written
  save_dir/probe_resumed.pt       right after a resume from step N loaded it (before any step)
  save_dir/probe_after_dpD.pt     with PROBE_AFTER=1 too: right after step N + 1 (D: data-parallel size)
The state: step, consumed samples, learning rate, each optimizer parameter group's settings, each
parameter's full fp32 value and Adam moments (exp_avg, exp_avg_sq) gathered over the ZeRO partitions, the
Adam step counts of every rank's partitions, and the rows of the next global batch (every rank's next
micro-batches, sorted).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state  # noqa: E402

import pretrain_gpt  # noqa: E402
from training.loop import Trainer  # noqa: E402


def _gathered(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def training_state(trainer: Trainer) -> dict[str, Any]:
    engine = trainer.engine
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2: link the parameters'
        engine.optimizer._hp_optimizer_states_linked = False  # views to the optimizer state as it is now
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    params = {}
    for name, p in engine.module.named_parameters():
        params[name] = {
            "fp32": safe_get_full_fp32_param(p).detach().cpu().clone(),
            "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").detach().cpu().clone(),
            "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").detach().cpu().clone(),
        }
    local_steps = sorted({float(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s})
    it = trainer.data.train_batches(trainer.consumed)
    rows = [row.tolist() for _ in range(trainer.setup.grad_accum) for row in next(it)[0]]
    return {
        "step": trainer.step,
        "consumed": trainer.consumed,
        "lr": engine.get_lr()[0],
        "groups": sorted(
            json.dumps({k: v for k, v in g.items() if k != "params"}, sort_keys=True, default=str)
            for g in engine.optimizer.optimizer.param_groups
        ),
        "adam_steps": sorted({s for part in _gathered(local_steps) for s in part}),
        "params": params,
        "next_batch": sorted(row for part in _gathered(rows) for row in part),
    }


def install(step: int) -> None:
    save, fit = Trainer.save, Trainer.fit

    def probed_save(self: Trainer) -> None:
        save(self)
        if self.step == step:
            _write(self, "probe_saved.pt")

    def probed_fit(self: Trainer, stop: Any) -> dict[str, Any]:
        if self.step == step:
            _write(self, "probe_resumed.pt")
        return fit(self, stop)

    train_step = Trainer.train_step

    def probed_step(self: Trainer, it: Any) -> Any:
        out = train_step(self, it)
        if self.step == step and os.environ.get("PROBE_AFTER"):  # self.step: steps done before this one
            _write(self, f"probe_after_dp{self.dp_size}.pt")
        return out

    Trainer.save, Trainer.fit, Trainer.train_step = probed_save, probed_fit, probed_step


def _write(trainer: Trainer, name: str) -> None:
    state = training_state(trainer)
    if trainer.rank == 0:
        torch.save(state, trainer.save_dir / name)


if __name__ == "__main__":
    install(int(os.environ["PROBE_STEP"]))
    pretrain_gpt._exit_now(pretrain_gpt.main())
