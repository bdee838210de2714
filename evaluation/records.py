"""An evaluation's output directory that an interrupted run resumes: append-only JSONL records, and
run.json, which says what made them.

`codeparrot-eval humaneval` and `codeparrot-eval infill` write each generation and each verdict as one JSON
line, flushed and fsynced as soon as it exists; a resumed run reads them back (a line torn by the
interruption is skipped, so that record is made again) and does only what is missing. run.json holds the
identity of the run (the model, the sha256 of its weights and the settings that shape its records): a
resume must match it, else another model's records would be scored under this one's name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


def _describe(identity: dict) -> str:
    settings = "; ".join(
        ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
        for key, value in sorted(identity.items())
        if isinstance(value, dict)
    )
    weights = str(identity.get("weights_sha256"))[:16]
    return f"model {identity.get('model')} (weights sha256 {weights}; {settings})"


def check_resume(out: Path, identity: dict, record_files: Sequence[str]) -> None:
    """Records in ``out`` come from one model and one set of settings: ``identity`` ({"model",
    "weights_sha256", and a dict per group of settings, e.g. "sampling"}) is written to run.json by the
    first run and must match on resume in everything but "model" (the model's path may differ: the same
    weights give the same hash from a checkpoint or an export). ``record_files``: the JSONL files whose
    rows a run.json must vouch for.

    Raises:
        ValueError: naming the directory, both models and settings, and the fix.
    """
    path = out / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if any(saved.get(key) != value for key, value in identity.items() if key != "model"):
            raise ValueError(
                f"{out} holds the samples of {_describe(saved)}, not of {_describe(identity)}: resuming "
                f"would score them under this model's name. Use another --out, or delete {out} to start again"
            )
        return
    if any((out / name).exists() and (out / name).stat().st_size for name in record_files):
        raise ValueError(
            f"{out} holds samples but no {RUN_FILE} saying which model and settings made them: use "
            f"another --out, or delete {out} to start again"
        )
    path.write_text(json.dumps(identity, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file (none if it does not exist); a torn line (the run was killed mid-write) is
    skipped with a warning."""
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an incomplete row (interrupted write)", path, number)
    return rows


class Appender:
    """Appends JSON rows to a file, each flushed and fsynced, after terminating a torn last line if there
    is one. A context manager (closes the file)."""

    def __init__(self, path: Path) -> None:
        torn = path.exists() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
        self.f = path.open("a", encoding="utf-8")
        if torn:
            self.f.write("\n")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
