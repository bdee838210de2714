"""Whether a process of this host still runs: the one test behind every lock that may be taken over from a
dead holder (the preprocessing output lock and verification claim here, training's run lock and its
dead-rank report).

A pid alone is not enough: a killed process stays a zombie until its parent reaps it, and a pid can be
reused by a later process; the start time in /proc/PID/stat tells the two apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 on), None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), None if unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def alive(pid: Any, start: str | None = None) -> bool:
    """Whether process `pid` (started at `start`, if known) still runs on this host: not gone, not a
    zombie (killed but not yet reaped by its parent), not a reused pid. True when `pid` is not a pid at
    all (a holder file still being written): whoever asks then decides by its own clock."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    return start is None or (fields[19] if fields else None) in (None, start)
