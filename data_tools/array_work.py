"""The array job's work directory (data_tools.array_job): where each phase's results live, how a task
writes them (atomically, its record last) and how a later phase finds and checks them.

    W/scan/task_NNNNN.json     a scan task's record (written last: the task is done): settings, its range
                               of inputs, counts and sha256 of its files, paths, bad-input report
    W/scan/task_NNNNN.rows     a ROW per record read, raw (the task's record is the header)
    W/scan/task_NNNNN.sigs     MinHash signatures of the records that passed the filters (--near-dedup)
    W/keep/task_NNNNN.npy      which of the task's records are kept
    W/keep.json                the keep phase's record: the cleaning report, a hash of the masks
    W/tokenizer/               the tokenizer trained by keep (unless --tokenizer is given)
    W/encode/task_NNNNN/       the task's shards and unit records, as codeparrot-preprocess writes them
    W/encode/task_NNNNN.json   an encode task's record: its units
    W/logs/                    the SLURM jobs' output (launch/slurm/preprocess.sh)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.atomic import replace_atomic, write_atomic
from data_tools.errors import DataError
from data_tools.preprocess import PreprocessConfig

SBATCH = "launch/slurm/preprocess.sbatch"
# A scanned record: where it is (an index into the task's paths, and its line), its size, content hash,
# status: BAD (bad input, in the task's problems), PASSED (the filters), or the index of the failing filter
# in the task's list, and the benchmark problem it contains (an index into the task's list; -1: none).
ROW = np.dtype(
    [
        ("path", "<i4"),
        ("line", "<i8"),
        ("nbytes", "<i8"),
        ("nchars", "<i8"),
        ("hash", "<u8"),
        ("status", "<i2"),
        ("problem", "<i2"),
    ]
)
BAD, PASSED = -2, -1
SIGNATURE = (128,)  # dedup.NUM_PERM uint32 values


@dataclasses.dataclass(frozen=True)
class ArrayJob:
    """One array job: its settings, its work directory and its number of tasks. `flags`: the command-line
    flags every phase takes, for the commands that messages give."""

    cfg: PreprocessConfig
    work: Path
    tasks: int
    flags: tuple[str, ...] = ()

    # ---- where things are

    def scan_meta(self, task: int) -> Path:
        return self.work / "scan" / f"task_{task:05d}.json"

    def scan_file(self, task: int, kind: str) -> Path:
        return self.work / "scan" / f"task_{task:05d}.{kind}"

    def keep_mask(self, task: int) -> Path:
        return self.work / "keep" / f"task_{task:05d}.npy"

    @property
    def keep_meta(self) -> Path:
        return self.work / "keep.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.cfg.tokenizer or self.work / "tokenizer"

    def encode_dir(self, task: int) -> Path:
        return self.work / "encode" / f"task_{task:05d}"

    def encode_meta(self, task: int) -> Path:
        return self.work / "encode" / f"task_{task:05d}.json"

    def command(self, phase: str, tasks: Sequence[int] = ()) -> str:
        """How to run `phase` (for `tasks`, in an array phase) with this job's flags."""
        shared = ["--tasks", str(self.tasks), "--work", str(self.work), *(self.flags or ["<the same flags>"])]
        if not tasks:
            return f"`{shlex.join(['codeparrot-preprocess-array', phase, *shared])}`"
        one = shlex.join(["codeparrot-preprocess-array", phase, "--task", str(tasks[0]), *shared])
        others = f" (and --task {', '.join(map(str, tasks[1:]))})" if len(tasks) > 1 else ""
        sbatch = shlex.join(["sbatch", f"--array={','.join(map(str, tasks))}", SBATCH, phase, *shared])
        return f"`{one}`{others}, or under SLURM `{sbatch}`"

    # ---- what a phase reads, checked

    def rows(self, task: int, record: dict[str, Any]) -> np.ndarray:
        """Task `task`'s scanned rows (ROW, memory-mapped); `record`: its scan record."""
        return read_array(self.scan_file(task, "rows"), ROW, record["rows"], (), self.command("scan", [task]))

    def signatures(self, task: int, record: dict[str, Any]) -> np.ndarray:
        """Task `task`'s MinHash signatures, uint32[n, 128] (memory-mapped)."""
        rerun = self.command("scan", [task])
        return read_array(self.scan_file(task, "sigs"), np.uint32, record["signatures"], SIGNATURE, rerun)

    def keep_mask_of(self, task: int, rows: int) -> np.ndarray:
        """Task `task`'s keep mask, checked against its `rows` records."""
        path = self.keep_mask(task)
        mask = np.load(path) if path.exists() else None
        if mask is None or mask.shape != (rows,):
            raise DataError(
                f"{path}: {'missing' if mask is None else f'{len(mask)} entries for {rows} records'}: the "
                f"keep phase did not finish after the last scan. Run it again: {self.command('keep')}"
            )
        return mask

    def scan_records(self, tasks: Iterable[int]) -> list[dict[str, Any]]:
        """The records of finished scan tasks; raises DataError naming the tasks not finished (or scanned
        with other settings) and the command that runs them."""
        expected = {"fingerprint": self.cfg.cleaning_fingerprint(), "tasks": self.tasks}
        metas, missing, other = [], [], []
        for task in tasks:
            meta = read_json(self.scan_meta(task))
            if meta is None:
                missing.append(task)
            elif any(meta.get(k) != v for k, v in expected.items()):
                other.append(task)
            metas.append(meta)
        if missing or other:
            raise DataError(self.not_finished("scan", missing, other, self.scan_meta))
        if len({m["inputs"] for m in metas}) > 1:
            raise DataError(
                f"the scan tasks in {self.work / 'scan'} listed different input files: the inputs changed "
                f"while they ran. Run every scan task again: {self.command('scan', range(self.tasks))}"
            )
        return metas

    def not_finished(self, phase: str, missing: list[int], other: list[int], record: Any) -> str:
        """The message for the tasks of `phase` that are `missing` or out of date (`other`); `record(task)`:
        the file that marks a task done."""
        parts = []
        if missing:
            parts.append(
                f"task(s) {_listed(missing)} of {self.tasks} have not finished (no {record(missing[0])})"
            )
        if other:
            parts.append(
                f"task(s) {_listed(other)} are out of date ({record(other[0])}: written with other inputs, "
                "settings or --tasks, or before the phase it depends on ran again)"
            )
        return (
            f"{phase} phase: {'; '.join(parts)}. Run them with this command's flags: "
            f"{self.command(phase, sorted(missing + other))}"
        )

    def keep_record(self) -> dict[str, Any]:
        """The keep phase's record; raises DataError with the command that runs it if it has not finished."""
        meta = read_json(self.keep_meta)
        if (
            meta is None
            or meta.get("fingerprint") != self.cfg.cleaning_fingerprint()
            or meta["tasks"] != self.tasks
        ):
            why = "not found" if meta is None else "written with other inputs, settings or --tasks"
            raise DataError(
                f"{self.keep_meta}: {why}: the keep phase has not finished for this job. "
                f"Run it: {self.command('keep')}"
            )
        return meta


def read_json(path: Path) -> dict[str, Any] | None:
    """A task's record, or None when there is none (not finished, or cut short)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_array(
    path: Path, dtype: Any, info: dict[str, Any], shape: tuple[int, ...], rerun: str
) -> np.ndarray:
    """A scan file (memory-mapped), after checking its size against the task's record `info`."""
    dtype = np.dtype(dtype)
    expected = info["count"] * dtype.itemsize * int(np.prod(shape))
    size = path.stat().st_size if path.exists() else None
    if size != expected:
        raise DataError(
            f"{path}: {'missing' if size is None else f'{size} bytes'}, its task's record says "
            f"{expected}: damaged or left by another run. Run the task again: {rerun}"
        )
    if info["count"] == 0:
        return np.empty((0, *shape), dtype)
    return np.memmap(path, dtype, "r", shape=(info["count"], *shape))


def _listed(tasks: list[int]) -> str:
    return ", ".join(map(str, tasks[:20])) + (f" and {len(tasks) - 20} more" if len(tasks) > 20 else "")


class Appender:
    """Appends arrays (raw, C order) to a temporary file beside `path`, hashing them; `close()` moves it
    into place. The task's meta JSON, written after, is the file's header (count, dtype, sha256)."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close/abort
        self.sha, self.count = hashlib.sha256(), 0

    def write(self, array: np.ndarray) -> None:
        buf = np.ascontiguousarray(array).tobytes()
        self.file.write(buf)
        self.sha.update(buf)
        self.count += len(array)

    def close(self) -> dict[str, Any]:
        self.file.close()
        replace_atomic(self.tmp, self.path)
        return {"count": self.count, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to `path`, so that a reader sees the old file or the whole new one."""
    write_atomic(path, lambda f: np.save(f, array))
