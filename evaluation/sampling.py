"""The sampling settings every generating tool accepts, checked in one place (no torch import, so the
command-line tools refuse a bad setting before loading anything)."""

from __future__ import annotations

import math


def check_sampling(
    *, temperature: float, top_p: float, max_new_tokens: int, top_k: int | None = None
) -> None:
    """Refuse sampling settings that do not mean what they say (the one check codeparrot-generate,
    codeparrot-eval and ``complete`` share): a negative temperature samples from the inverted
    distribution, top-p outside (0, 1] keeps no token or every one, no new token is no completion.

    Raises:
        ValueError: naming every setting out of range and its valid range.
    """
    problems = []
    if not (temperature >= 0 and math.isfinite(temperature)):
        problems.append(f"--temperature ({temperature}) must be a finite number >= 0 (0: greedy)")
    if not 0 < top_p <= 1:
        problems.append(f"--top-p ({top_p}) must be in (0, 1] (1: no nucleus cut)")
    if max_new_tokens < 1:
        problems.append(f"--max-new-tokens ({max_new_tokens}) must be >= 1")
    if top_k is not None and top_k < 1:
        problems.append(f"--top-k ({top_k}) must be >= 1")
    if problems:
        raise ValueError("; ".join(problems))
