"""The stop request a rank takes from a signal: finish the step, save, exit 0.

Light on purpose (no torch at import): pretrain_gpt.py installs it before anything heavy is imported. A
signal that arrives during the seconds of start-up (SLURM's time-limit warning may come up to a minute
early, and a cancel at any time) would otherwise find Python's default action for SIGUSR1 and SIGTERM,
which ends the process without a word.
"""

from __future__ import annotations

import signal
from typing import Any


class StopRequest:
    """SIGTERM / SIGUSR1 (SLURM preemption, `scancel --signal`) and Ctrl-C (SIGINT, which a terminal sends
    to the launcher and every rank at once): finish the step, save, exit 0. A second Ctrl-C stops at once,
    without saving."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def agreed(self, device) -> bool:
        """Collective: True on every rank if any rank was signalled."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
