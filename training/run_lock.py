"""One run per `train.save_dir`: a lock file naming the host, pid and start time of the run that holds it.

Rank 0 takes the lock before it writes anything into the directory, and releases it when the run ends. The
lock file is created atomically (O_CREAT | O_EXCL), so of two runs started together exactly one wins.

A lock left behind by a run that died (SIGKILL, OOM, a lost node) is stale and taken over:
  - on the same host, when its process is gone, or the pid now belongs to a process started at another
    time (pid reuse; compared through the start time in /proc/PID/stat);
  - from another host, where the process cannot be looked at, when its heartbeat is older than
    `STALE_AFTER_S`: the holder touches the lock file every `HEARTBEAT_S` seconds while it runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from training.config import ConfigError

logger = logging.getLogger(__name__)

LOCK = ".run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # five missed-by-far heartbeats: a lock from another host is stale after this


def _process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return start is None or _process_start(pid) in (None, start)


def stale_reason(holder: dict[str, Any], age_s: float, host: str) -> str | None:
    """Why the lock `holder` (heartbeat `age_s` seconds ago) may be taken over from `host`, or None."""
    if holder.get("host") == host:
        if not _alive(int(holder.get("pid", -1)), holder.get("proc_start")):
            return f"process {holder.get('pid')} on {host} is gone"
        return None
    if age_s > STALE_AFTER_S:
        return f"no heartbeat from {holder.get('host')} for {age_s:.0f} s (> {STALE_AFTER_S:.0f} s)"
    return None


class RunLock:
    """The lock of one save_dir, held by this process; `release()` (idempotent) frees it."""

    def __init__(self, save_dir: Path) -> None:
        self.path = save_dir / LOCK
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the run that holds it. Creates save_dir."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": self.host,
            "pid": os.getpid(),
            "proc_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        for _ in range(3):  # a stale lock removed by another contender in between: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise ConfigError([f"{self.path}: could not take the run lock (it keeps reappearing)"])

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError):
            holder, age = {}, 0.0
        reason = stale_reason(holder, age, self.host)
        if reason is None:
            raise ConfigError(
                [
                    f"train.save_dir {self.path.parent} is in use by another run: host "
                    f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
                    f"{holder.get('started', '?')} (lock file {self.path}). Two runs in one directory would "
                    "overwrite each other's checkpoints: wait for that run to end, or use another "
                    "train.save_dir. If that run is gone (its host lost), delete the lock file"
                ]
            )
        logger.warning("taking over the run lock %s: %s", self.path, reason)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        self.held = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
