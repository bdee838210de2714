"""Throughput of shard verification (`data_tools.manifest.verify_dataset`) against `sha256sum` on the same
files.

    python -m bench.verify_data                        # 4 GB in 8 shards, warm and cold page cache
    python -m bench.verify_data --gb 0.2 --repeats 1   # seconds: a smoke test

The shards are random token ids below a 32,768 vocabulary (uint16), written with the shard writer and
listed in a manifest, in --dir (default: a temporary directory on the disk that holds /tmp). For each
cache state, in the same run, the sides alternate (sha256sum, ours, ours, sha256sum, ...):
  sha256sum  coreutils `sha256sum` over every .bin and .idx, one process (what a user would type);
  ours       verify_dataset with its record removed first, so every file is hashed: the sizes check, one
             thread per file on up to min(files, cores, 8) threads, the record written at the end.
Cache states: "warm" (the files in the page cache: hashing speed, CPU-bound) and "cold" (each file's pages
dropped with posix_fadvise(DONTNEED) before each run: what the disk gives). Each side's figure is its best
of --repeats runs in MB/s (10^6 bytes); ratio = ours / sha256sum, printed last. Raw figures go to
bench/results/verify_data_<date>_<cpu>.json (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    Run,
)
from data_tools.indexed_dataset import IndexedDatasetWriter
from data_tools.manifest import MANIFEST, VERIFIED, verify_dataset

VOCAB = 32768
CHUNK_TOKENS = 8 << 20  # 16 MB of uint16 per write


def make_dataset(out: Path, gigabytes: float, shards: int) -> list[Path]:
    """A manifest and `shards` shards of random tokens, `gigabytes` in all; returns the shard files."""
    out.mkdir(parents=True, exist_ok=True)
    chunk = np.random.default_rng(0).integers(0, VOCAB, size=CHUNK_TOKENS, dtype=np.uint16)
    per_shard = max(1, round(gigabytes * 1e9 / shards / chunk.nbytes))
    entries = []
    for i in range(shards):
        writer = IndexedDatasetWriter(out / f"train_{i:05d}", np.uint16)
        for j in range(per_shard):
            writer.add_documents(np.roll(chunk, i * per_shard + j), np.full(64, CHUNK_TOKENS // 64))
        entries.append({"prefix": f"train_{i:05d}", **writer.finalize()})
    manifest = {
        "dtype": "uint16",
        "tokenizer": {"sha256": "0" * 64, "vocab_size": VOCAB},
        "splits": {"train": {"shards": entries, "tokens": sum(e["tokens"] for e in entries)}},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return [out / f"{e['prefix']}{ext}" for e in entries for ext in (".bin", ".idx")]


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (written back first), so the next read goes to disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_sha256sum(data: Path, files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)
    return time.perf_counter() - started


def run_ours(data: Path, files: list[Path]) -> float:
    (data / VERIFIED).unlink(missing_ok=True)
    started = time.perf_counter()
    verify_dataset(data, progress=False)
    return time.perf_counter() - started


def measure(data: Path, files: list[Path], cold: bool, repeats: int) -> dict[str, Any]:
    """Best MB/s of each side over `repeats` alternating rounds."""
    total = sum(p.stat().st_size for p in files)
    times: dict[str, list[float]] = {"sha256sum": [], "ours": []}
    sides = [("sha256sum", run_sha256sum), ("ours", run_ours)]
    for r in range(repeats):
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            if cold:
                evict(files)
            else:
                fn(data, files)  # a warm-up read puts every file in the page cache
            times[name].append(fn(data, files))
    mbps = {name: total / 1e6 / min(t) for name, t in times.items()}
    return {
        "bytes": total,
        "seconds": times,
        "sha256sum_mb_per_s": mbps["sha256sum"],
        "ours_mb_per_s": mbps["ours"],
        "ratio": mbps["ours"] / mbps["sha256sum"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=4.0, help="dataset size in GB (10^9 bytes)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where to write the shards (removed after)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    args = parser.parse_args(argv)
    if shutil.which("sha256sum") is None:
        parser.error("sha256sum (coreutils) is not on PATH: it is the baseline")
    harness = Run("bench.verify_data", argv)
    out, machine = harness.out, harness.machine
    out(f"sha extensions (sha_ni): {'sha_ni' in machine['cpu_flags'].split()}, cores {machine['cores']}")
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "states": {}}
    table, finals = [], []
    work = Path(tempfile.mkdtemp(prefix="verify_bench_", dir=args.dir))
    try:
        out(f"writing {args.gb} GB in {args.shards} shards to {work} ...")
        files = make_dataset(work / "data", args.gb, args.shards)
        for state in ("warm", "cold"):
            f = measure(work / "data", files, state == "cold", args.repeats)
            figures["states"][state] = f
            out(
                f"{state:>5}: {f['bytes'] / 1e9:.2f} GB in {len(files)} files | sha256sum "
                f"{f['sha256sum_mb_per_s']:.0f} MB/s | ours {f['ours_mb_per_s']:.0f} MB/s | "
                f"ratio {f['ratio']:.2f}"
            )
            table.append(
                {
                    "benchmark": "bench/verify_data.py",
                    "setting": f"{f['bytes'] / 1e9:.1f} GB, {len(files)} files, page cache {state}",
                    "precision": "n/a",
                    "native": "n/a",
                    "baseline": f"sha256sum {f['sha256sum_mb_per_s']:.0f} MB/s",
                    "ours": f"{f['ours_mb_per_s']:.0f} MB/s",
                    "ratio": round(f["ratio"], 3),
                    "how": f"best of {args.repeats}, alternating",
                }
            )
            finals.append(f"{state} {f['ratio']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    harness.finish(
        precision=None,
        figures=figures,
        table=table,
        final_line="ratio ours/sha256sum: " + " | ".join(finals),
        results_dir=args.results_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
