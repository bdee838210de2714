"""Hashing a dataset's shards once per filesystem: a record of what was hashed, a claim that lets one
process hash while the others wait, and hashing in parallel at disk speed.

Why a record and a claim. A 100 GB dataset takes minutes to hash, and every host of a run (and every local
rank) wants it verified before training. The first process that finds files to hash creates `CLAIM` in the
dataset directory with O_EXCL and hashes them; the others wait while the claim is alive (its holder touches
it every few seconds), then read `RECORD`, which now holds every file, and hash nothing. On a filesystem
shared by the hosts (NFS, Lustre, GPFS) the files are hashed once for the whole run; on per-host disks, once
per host. A claim that nobody refreshes for `STALE_S` (its holder was killed) is taken over.

Why the record's key is (size, mtime_ns, ctime_ns, inode) and not the device. Every rewrite changes the
change time, which no user call can set: `cp -p` and `rsync --inplace` keep size and mtime but not ctime. On
NFS the inode (the server's file id), the size, mtime and ctime are the server's, the same from every client,
so one host's record is valid on all; `st_dev` is a number each client gives its mount, different per host,
and would make every host hash again. The record lives beside the shards, so the directory already says
which filesystem it is about. (NFS clients cache attributes for up to `acregmax`, 60 s by default: a rewrite
from another host less than a minute before the run can be missed by the quick check, not by a full one.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from data_tools.atomic import write_atomic
from data_tools.processes import alive

logger = logging.getLogger(__name__)

RECORD = ".verified.json"  # file name -> size, mtime_ns, ctime_ns, ino, sha256
CLAIM = ".verify.claim"  # held (O_EXCL) by the process that is hashing; JSON: host, pid, started
RECORD_KEYS = ("size", "mtime_ns", "ctime_ns", "ino")
STALE_S = 60.0  # a claim whose modification time did not move for this long is abandoned
HEARTBEAT_S = 5.0  # how often the holder touches its claim
POLL_S = 0.2  # how often a waiter looks at the claim
CHUNK = 1 << 24  # 16 MiB reads: hashlib releases the GIL on buffers this large


def file_key(path: Path) -> dict[str, int]:
    """What the record compares: a file with the same key has not been written since it was hashed."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def sha256_file(path: Path, on_read: Callable[[int], Any] = lambda n: None) -> str:
    """The sha256 of a file, read 16 MiB at a time; `on_read(n)` after each read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            on_read(len(chunk))
    return h.hexdigest()


def hash_files(
    paths: list[Path],
    on_read: Callable[[int], Any],
    workers: int | None = None,
    sha: Callable[[Path, Callable[[int], Any]], str] = sha256_file,
) -> dict[Path, str]:
    """sha256 of each path, several files at once (one thread per file: a file's hash is sequential, and
    reading and hashing release the GIL). `on_read` may be called from any of the threads."""
    workers = workers or min(len(paths), os.cpu_count() or 1, 8) or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
        return dict(zip(paths, pool.map(lambda p: sha(p, on_read), paths), strict=True))


def load_record(path: Path) -> dict[str, dict[str, Any]]:
    """The record, file name -> key and sha256; empty if absent, unreadable or of an older layout."""
    try:
        files = json.loads(path.read_text())["files"]
        if all(set(e) >= {*RECORD_KEYS, "sha256"} for e in files.values()):
            return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {}


def save_record(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """Write the record atomically under a temporary name unique across hosts; a directory that cannot
    be written only costs the next call a re-hash."""
    try:
        record = json.dumps({"version": 2, "files": dict(sorted(files.items()))}, indent=1) + "\n"
        write_atomic(path, record, unique=True)
    except OSError as e:
        logger.warning(
            "%s: cannot record the verification (%s); the next verification hashes the shards again",
            path,
            e.strerror,
        )


class Claim:
    """The right to hash a directory's shards, held by one process of all those sharing the directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last_beat = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def take(cls, data_dir: Path) -> Claim | None:
        """The claim, or None when this process cannot write one there (a read-only directory: it then
        hashes on its own). Waits while another live process holds it."""
        path = data_dir / CLAIM
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                _wait_for(path)
                continue
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                    return None
                raise
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return cls(path)

    def beat(self) -> None:
        """Touch the claim (at most every HEARTBEAT_S; safe from any thread) so waiters see it alive."""
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_S or not self._lock.acquire(blocking=False):
            return
        try:
            self._last_beat = now
            with contextlib.suppress(OSError):
                os.utime(self.path)
        finally:
            self._lock.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def _holder(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text() or "{}")
    return {}


def _wait_for(path: Path) -> None:
    """Return when the claim at `path` is gone, or removed as abandoned: its holder was a process of this
    host that is dead, or its modification time has not moved for STALE_S by this process's clock (host
    clocks may disagree; a change is what counts). Two waiters may both judge it abandoned and both hash:
    the result is the same, only the work is done twice."""
    holder, logged = _holder(path), False
    seen, since = None, time.monotonic()
    while True:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != seen:
            seen, since = mtime, time.monotonic()
        dead_here = holder.get("host") == socket.gethostname() and not alive(holder.get("pid"))
        if dead_here or time.monotonic() - since > STALE_S:
            logger.warning("%s: taking over the verification abandoned by %s", path.parent, _who(holder))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        if not logged:
            logger.info("%s: waiting for %s, who is verifying the shards", path.parent, _who(holder))
            logged = True
        time.sleep(POLL_S)
        holder = holder or _holder(path)


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


@contextlib.contextmanager
def claimed(data_dir: Path) -> Iterator[Claim | None]:
    """Hold the directory's claim (None where it cannot be written) for the block."""
    claim = Claim.take(data_dir)
    try:
        yield claim
    finally:
        if claim is not None:
            claim.release()
