"""What the HumanEval and infilling tests share: whether this machine isolates programs, and the real
sandbox counting its runs (and interrupting one) to test resumption."""

from __future__ import annotations

from evaluation.sandbox import Sandbox, probe_isolation

ISOLATED = probe_isolation() is None


class CountingSandbox(Sandbox):
    """The real sandbox, counting runs; `fail_at` raises on that run (1-based) to interrupt judging."""

    def __init__(self, *args, fail_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.runs, self.fail_at = 0, fail_at

    def run(self, program: str, *, timeout: float | None = None):
        self.runs += 1
        if self.runs == self.fail_at:
            raise KeyboardInterrupt("interrupted while judging")
        return super().run(program, timeout=timeout)
