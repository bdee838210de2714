"""One run per `train.save_dir`: a lock file naming the host, pid, start time, SLURM job and an owner token
of the run that holds it.

Rank 0 takes the lock before it writes anything into the directory, and releases it when the run ends.
Every change of the lock file is atomic, so of any number of contenders exactly one wins:
  - a free lock is taken by writing a complete private file and hard-linking it to the lock's name
    (`link()` fails if the name exists), so the lock never exists half-written;
  - a stale lock is taken over by first claiming its generation (the stale holder's token) with an
    O_CREAT | O_EXCL claim file, `.run.lock.takeover-<token>`: one contender gets the claim, checks the lock
    still holds that token, and renames its own complete file over it. The others see the claim (or a new
    token) and look again.
  - the heartbeat touches the holder's own file through its open descriptor (never whatever file now has
    the name), and `release()` removes the lock only while it still holds this run's token.

A lock left behind by a run that died (SIGKILL, OOM, a lost node) is stale and taken over:
  - when it was written by the same SLURM job (SLURM_JOB_ID): the job was requeued or restarted, and SLURM
    ends every process of a job before it runs it again, so the holder is gone even when the new run
    landed on another node;
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
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_tools.processes import alive, process_start
from training.config import ConfigError

logger = logging.getLogger(__name__)

LOCK = ".run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # five missed-by-far heartbeats: a lock from another host is stale after this
CLAIM_STALE_S = 60.0  # a takeover claim whose claimant died between claim and rename (microseconds)
ATTEMPTS = 50  # rounds of look-and-take before giving up (each contender wins or sees a live holder)


def stale_reason(holder: dict[str, Any], age_s: float, host: str, slurm_job: str | None = None) -> str | None:
    """Why the lock `holder` (heartbeat `age_s` seconds ago) may be taken over from `host` by a run of
    SLURM job `slurm_job` (None outside SLURM), or None when it may not."""
    if slurm_job and holder.get("slurm_job_id") == slurm_job:
        return (
            f"it was written by an earlier run of this SLURM job {slurm_job} (restart "
            f"{holder.get('slurm_restart_count', '?')}, host {holder.get('host')}, pid {holder.get('pid')}), "
            "which SLURM ended before running the job again"
        )
    if holder.get("host") == host:
        if not alive(int(holder.get("pid", -1)), holder.get("proc_start")):
            return f"process {holder.get('pid')} on {host} is gone"
        return None
    if age_s > STALE_AFTER_S:
        return f"no heartbeat from {holder.get('host')} for {age_s:.0f} s (> {STALE_AFTER_S:.0f} s)"
    return None


def _generation(holder: dict[str, Any], stat: os.stat_result) -> str:
    """The name of one lock file's life: its owner token, or for a lock without one (written by an older
    version) its inode and change time."""
    token = holder.get("token")
    return str(token) if isinstance(token, str) and token.isalnum() else f"i{stat.st_ino}c{stat.st_ctime_ns}"


class RunLock:
    """The lock of one save_dir, held by this process; `release()` (idempotent) frees it."""

    def __init__(self, save_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.path = save_dir / LOCK
        self.host = socket.gethostname()
        self.token = uuid.uuid4().hex
        self.slurm_job = env.get("SLURM_JOB_ID") or None
        self.restart_count = env.get("SLURM_RESTART_COUNT", "0")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": os.getpid(),
            "proc_start": process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "token": self.token,
            "slurm_job_id": self.slurm_job,
            "slurm_restart_count": self.restart_count,
        }

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the run that holds it. Creates save_dir."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f"{LOCK}.{self.token}")
        mine.write_text(json.dumps(self._record()))
        try:
            for _ in range(ATTEMPTS):
                if self._try_link(mine) or self._take_over_if_stale(mine):
                    self._hold()
                    return
                time.sleep(0.01)
        finally:
            mine.unlink(missing_ok=True)
        raise ConfigError(
            [f"{self.path}: could not take the run lock after {ATTEMPTS} attempts (it keeps changing hands)"]
        )

    def _try_link(self, mine: Path) -> bool:
        try:
            os.link(mine, self.path)
        except FileExistsError:
            return False
        return True

    def _hold(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        if self._read_token() != self.token:  # cannot happen: only the winner's name points at our inode
            raise ConfigError([f"{self.path}: the run lock changed hands while it was taken"])
        self.held = True
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _read_holder(self) -> tuple[dict[str, Any], os.stat_result] | None:
        """The lock's content and stat, None when there is no lock; {} for content that is not JSON."""
        try:
            with open(self.path) as f:
                stat = os.fstat(f.fileno())
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text or "{}")
        except json.JSONDecodeError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), stat

    def _read_token(self) -> str | None:
        read = self._read_holder()
        return read[0].get("token") if read else None

    def _take_over_if_stale(self, mine: Path) -> bool:
        """True if this run took the lock over; False to look again; ConfigError for a live holder."""
        read = self._read_holder()
        if read is None:
            return False  # freed meanwhile: try to link again
        holder, stat = read
        reason = stale_reason(holder, time.time() - stat.st_mtime, self.host, self.slurm_job)
        if reason is None:
            raise ConfigError([self._in_use_message(holder)])
        claim = self.path.with_name(f"{LOCK}.takeover-{_generation(holder, stat)}")
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            self._drop_dead_claim(claim)
            return False
        try:
            again = self._read_holder()  # the claim is ours: only we may replace this generation
            if again is None or _generation(*again) != _generation(holder, stat):
                return False  # superseded before our claim: look again
            logger.warning("taking over the run lock %s: %s", self.path, reason)
            os.rename(mine, self.path)
            return True
        finally:
            claim.unlink(missing_ok=True)

    def _drop_dead_claim(self, claim: Path) -> None:
        """A claim older than CLAIM_STALE_S belongs to a contender that died between claim and rename;
        its generation is still stale, so the claim is removed for the next round."""
        try:
            if time.time() - claim.stat().st_mtime > CLAIM_STALE_S:
                logger.warning("removing the abandoned takeover claim %s", claim)
                claim.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _in_use_message(self, holder: dict[str, Any]) -> str:
        job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
        return (
            f"train.save_dir {self.path.parent} is in use by another run: host "
            f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
            f"{holder.get('started', '?')}{job} (lock file {self.path}). Two runs in one directory would "
            "overwrite each other's checkpoints: wait for that run to end, or use another "
            "train.save_dir. If that run is gone (its host lost), delete the lock file"
        )

    def _heartbeat(self) -> None:
        """Touch our own lock file (through its descriptor: a lock taken over by another run is not ours
        to refresh); say once if the lock was lost."""
        warned = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
                lost = os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
            except (OSError, TypeError):
                lost = True
            if lost and not warned:
                logger.error(
                    "the run lock %s is no longer this run's (removed or taken over by another run); "
                    "two runs may now write into %s",
                    self.path,
                    self.path.parent,
                )
                warned = True

    def release(self) -> None:
        """Remove the lock if it is still this run's (a run that took it over keeps it)."""
        if not self.held:
            return
        self._stop.set()
        self.held = False
        try:
            if self._read_token() == self.token:
                self.path.unlink(missing_ok=True)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
