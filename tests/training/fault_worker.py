"""pretrain_gpt.py with faults injected, for tests only; run it in place of pretrain_gpt.py.

The faults come from the environment variable FAULTS (or the file named by FAULTS_FILE), a JSON object:
  {"nan_loss_at_steps": [3, 4]}          the training loss of these optimizer steps (1-based) is NaN, so the
                                         non-finite gradients reach DeepSpeed as a real divergence would
  {"sigkill_at_step": [rank, step]}      that rank kills itself with SIGKILL when step `step` starts (after
                                         writing the time to save_dir/sigkilled_at)
  {"sigkill_in_save": [rank, step]}      that rank kills itself with SIGKILL in the middle of the save at step
                                         `step`: after DeepSpeed wrote every rank's files, before its own
                                         RNG state (so the tag holds files of this save and older ones)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pretrain_gpt  # noqa: E402
from model.gpt2 import GPT  # noqa: E402
from training import checkpoint  # noqa: E402
from training.loop import Trainer  # noqa: E402


def install(faults: dict) -> None:
    current = {"step": 0}  # the step being trained, 1-based
    nan_steps = set(faults.get("nan_loss_at_steps", []))
    kill = faults.get("sigkill_at_step")
    forward, train_step = GPT.forward, Trainer.train_step

    def faulty_forward(self, idx, targets=None, return_logits=False):
        logits, loss = forward(self, idx, targets, return_logits)
        if loss is not None and self.training and current["step"] in nan_steps:
            loss = loss * float("nan")
        return logits, loss

    def faulty_train_step(self, it):
        current["step"] = self.step + 1
        if kill and self.rank == kill[0] and current["step"] == kill[1]:
            (self.save_dir / "sigkilled_at").write_text(f"{time.time()}\n")  # for the test's timing
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(self, it)

    GPT.forward, Trainer.train_step = faulty_forward, faulty_train_step
    if faults.get("sigkill_in_save"):
        _kill_in_save(*faults["sigkill_in_save"])


def _kill_in_save(rank: int, step: int) -> None:
    save, rng_state = Trainer.save, checkpoint.rng_state
    saving = {"step": 0}

    def tracked_save(self):
        saving["step"] = self.step if self.rank == rank else 0
        return save(self)

    def rng_state_or_die():
        if saving["step"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return rng_state()

    Trainer.save, checkpoint.rng_state = tracked_save, rng_state_or_die


if __name__ == "__main__":
    # FAULTS_FILE (a path) where the JSON must travel to other hosts: DeepSpeed's runner quotes exported
    # values in double quotes, which JSON's own quotes would break.
    faults = Path(os.environ["FAULTS_FILE"]).read_text() if "FAULTS_FILE" in os.environ else None
    install(json.loads(faults or os.environ.get("FAULTS", "{}")))
    pretrain_gpt._exit_now(pretrain_gpt.main())
