"""codeparrot-shards: check shards and print their counts, against their manifest where one lists them.

Kept apart from the format (data_tools/indexed_dataset.py), which knows nothing of manifests.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmdline import EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNUSABLE
from cmdline.args import OneLineParser
from data_tools.errors import DataError
from data_tools.indexed_dataset import IndexedDataset
from data_tools.manifest import MANIFEST, load_manifest, verify_dataset


def main(argv: Sequence[str] | None = None) -> int:
    """`codeparrot-shards PATH...`: validate shards and print their counts (JSON lines). PATH is a dataset
    directory (every shard of its manifest) or a shard's path prefix. Shards listed in a manifest are
    first verified against it (sha256 and size; data_tools.manifest.verify_dataset), unless --no-verify.
    Exit status 1 if a shard fails a check, 2 if a path does not exist."""
    parser = OneLineParser(
        prog="codeparrot-shards", description=main.__doc__, example="codeparrot-shards runs/demo/data"
    )
    parser.add_argument(
        "paths", nargs="+", help="dataset directories or shard prefixes (with or without .bin/.idx)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check against the manifest")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    status = EXIT_OK
    for path in args.paths:
        if not any(Path(path + suffix).exists() for suffix in ("", ".bin", ".idx")):
            print(f"error: {path}: no such dataset directory or shard; give one that exists", file=sys.stderr)
            status = EXIT_UNUSABLE
            continue
        try:
            for info in _check_path(Path(path), verify=not args.no_verify, progress=not args.quiet):
                print(json.dumps(info))
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            status = max(status, EXIT_CHECK_FAILED)
    return status


def _check_path(path: Path, verify: bool, progress: bool) -> list[dict[str, object]]:
    """The counts of the shards at `path` (a dataset directory or a shard prefix), after verifying those a
    manifest lists."""
    if path.is_dir():
        manifest = load_manifest(path)
        if verify:
            verify_dataset(path, progress=progress)
        names = [s["prefix"] for v in manifest["splits"].values() for s in v["shards"]]
        return [_shard_info(IndexedDataset(path / name)) for name in names]
    prefix = Path(str(path).removesuffix(".bin").removesuffix(".idx"))
    if verify and (prefix.parent / MANIFEST).exists():
        listed = {s["prefix"] for v in load_manifest(prefix.parent)["splits"].values() for s in v["shards"]}
        if prefix.name in listed:
            verify_dataset(prefix.parent, progress=progress, prefixes={prefix.name})
    return [_shard_info(IndexedDataset(prefix))]


def _shard_info(ds: IndexedDataset) -> dict[str, object]:
    return {
        "prefix": str(ds.prefix),
        "dtype": str(ds.dtype),
        "sequences": len(ds),
        "documents": ds.num_documents,
        "tokens": int(ds.sizes.sum(dtype=np.int64)),
    }


if __name__ == "__main__":
    sys.exit(main())
