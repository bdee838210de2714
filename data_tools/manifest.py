"""Reading and checking the `manifest.json` that preprocess writes beside the shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from data_tools.errors import DataError

MANIFEST = "manifest.json"


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise DataError(
            f"{path}: not found. Build the dataset with `codeparrot-preprocess --output {data_dir}` "
            "(or pass the directory that holds manifest.json)."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}). Rerun `codeparrot-preprocess` to rewrite it.") from e
    for key in ("splits", "tokenizer", "dtype"):
        if key not in manifest:
            raise DataError(f"{path}: no {key!r} entry; not a codeparrot-ds manifest.")
    return manifest


def manifest_hash(data_dir: str | Path) -> str:
    """A hash of what the data is (tokenizer and every shard's sha256), for checkpoints to compare."""
    manifest = load_manifest(data_dir)
    key = {
        "tokenizer": manifest["tokenizer"]["sha256"],
        "shards": {s: [x["sha256"] for x in v["shards"]] for s, v in sorted(manifest["splits"].items())},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def verify_shards(data_dir: str | Path) -> list[str]:
    """Recompute every shard's sha256; the list of problems (empty when all match)."""
    manifest, problems = load_manifest(data_dir), []
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = Path(data_dir) / f"{shard['prefix']}.bin"
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            if h.hexdigest() != shard["sha256"]:
                problems.append(f"{path}: sha256 {h.hexdigest()} != manifest {shard['sha256']}")
    return problems
