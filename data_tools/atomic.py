"""Files that readers see whole or not at all: written beside their final name, then renamed over it.

One helper for every file the project replaces in place (manifests, reports, progress records, the
`latest` tag, rank records, shards): a reader, another process or a run resumed after a crash sees the old
file or the complete new one, never a part. `os.replace` is atomic within one filesystem, on NFS and
Lustre included, so the temporary file always sits in the target's directory. (Directories made whole
before they appear, such as a trained tokenizer's, are renamed with `os.replace` itself.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def unique_tmp(path: Path) -> Path:
    """A temporary name beside `path` that no other process on any host sharing the directory uses."""
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def replace_atomic(tmp: Path, final: Path, fsync: bool = False) -> None:
    """Rename the finished `tmp` over `final`; with `fsync`, its bytes reach the disk first (a crash after
    the rename then cannot leave a complete-looking name over lost data)."""
    if fsync:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, final)


def write_atomic(
    path: Path,
    content: str | bytes | Callable[[BinaryIO], object],
    *,
    unique: bool = False,
    fsync: bool = False,
) -> None:
    """Write `content` (text as UTF-8, bytes, or a function given the open binary file) to `path`
    atomically, making its directory. `unique`: a temporary name of this host and process (several
    processes may write the same file at once; the last rename wins), else `path.tmp`. Nothing is left
    behind when writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path) if unique else path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        replace_atomic(tmp, path, fsync)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` so that a reader sees the old file or the whole new one."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")
