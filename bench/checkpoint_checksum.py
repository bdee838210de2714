"""The cost of a checkpoint's per-file checksums (training.checkpoint: CRC-32 in files.json, summed after
every save and checked before every resume), against `sha256sum` on the same files.

    python -m bench.checkpoint_checksum                     # 2 GB of checkpoint-like files under /tmp
    python -m bench.checkpoint_checksum --dir /ckpt --gb 4  # on the disk that holds checkpoints
    python -m bench.checkpoint_checksum --gb 0.05           # seconds: a smoke test

Writes --files files of random fp32 tensors (torch.save, as DeepSpeed writes its shards) totalling --gb GB
under --dir, then, in the same run and alternating, each side's best of --repeats:
  sha256sum   coreutils `sha256sum FILE...`, one process (the baseline)
  ours        training.checkpoint.checksums: zlib CRC-32 in 8 MiB reads, one thread per core (at most 8),
              as a resume checks a checkpoint; and ours in one thread, as one rank sums its share at a save
  hashlib     Python's sha256 (OpenSSL, SHA-NI where the CPU has it), one thread: what sha256 would cost
The files were just written, so they are read from the page cache unless --drop-caches (root) empties it
before every pass: then the disk bounds both sides. Printed: MB/s of each side, the time for the 1.5B's
checkpoint (about 21 GB: bf16 weights 3 GB, fp32 master weights and two Adam moments 18 GB) at those
speeds, and the ratio ours / sha256sum last.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from training.checkpoint import checksums

GB_1P5B = 1.5 * (2 + 3 * 4)  # 1.5e9 params: bf16 weights + fp32 master, exp_avg, exp_avg_sq


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the files are written (/tmp)")
    p.add_argument("--gb", type=float, default=2.0, help="total size of the files in GB (2)")
    p.add_argument("--files", type=int, default=8, help="number of files (8)")
    p.add_argument("--repeats", type=int, default=3, help="passes per side; the best counts (3)")
    p.add_argument("--drop-caches", action="store_true", help="empty the page cache before each pass")
    return p.parse_args(argv)


def write_files(where: Path, gb: float, count: int) -> list[Path]:
    import torch

    per_file = max(int(gb * 1e9 / count / 4), 1)
    paths = []
    for i in range(count):
        path = where / f"shard_{i:02d}.pt"
        torch.save({"exp_avg": torch.randn(per_file)}, path)
        paths.append(path)
    return paths


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _timed(run: Callable[[], object], drop: bool) -> float:
    if drop:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="checksum_bench_") as tmp:
        paths = write_files(Path(tmp), args.gb, args.files)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        sides: dict[str, Callable[[], object]] = {
            "sha256sum": lambda: subprocess.run(
                ["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL
            ),
            "ours": lambda: checksums(paths),
            "ours, 1 thread": lambda: checksums(paths, threads=1),
            "hashlib sha256": lambda: [_sha256(p) for p in paths],
        }
        best = {name: float("inf") for name in sides}
        for _ in range(args.repeats):
            for name, side in sides.items():
                best[name] = min(best[name], _timed(side, args.drop_caches))
    cache = "disk (page cache dropped)" if args.drop_caches else "page cache (files just written)"
    print(f"{args.files} files, {megabytes:.0f} MB in {args.dir}, from the {cache}; best of {args.repeats}")
    for name, seconds in best.items():
        rate = megabytes / seconds
        scale = f"the 1.5B's {GB_1P5B:.0f} GB: {GB_1P5B * 1e3 / rate:6.1f} s"
        print(f"  {name:15s} {rate:8.0f} MB/s   {scale}")
    print(f"ratio ours / sha256sum: {best['sha256sum'] / best['ours']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
