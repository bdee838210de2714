"""Reading and checking the `manifest.json` that preprocess writes beside the shards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools import hashing
from data_tools.errors import DataError
from data_tools.indexed_dataset import IndexedDataset

if TYPE_CHECKING:
    from data_tools.train_tokenizer import LoadedTokenizer

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# What verify_dataset found, per shard file: size, mtime_ns, ctime_ns, inode and sha256. A file whose key
# is unchanged is not hashed again (data_tools.hashing says why that key).
VERIFIED = hashing.RECORD


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


@dataclasses.dataclass(frozen=True)
class DatasetManifest:
    """One preprocessed dataset with its manifest.json read once: what validation, the start-up checks,
    a rank's data and a checkpoint's resume key need of it. The functions below take it, or a path (then
    they read the manifest themselves)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, data_dir: str | Path) -> DatasetManifest:
        return cls(Path(data_dir), load_manifest(data_dir))

    @property
    def tokenizer_entry(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer_entry["vocab_size"]

    @property
    def tokenizer_sha256(self) -> str:
        return self.tokenizer_entry["sha256"]


Dataset = str | Path | DatasetManifest


def opened(data: Dataset) -> DatasetManifest:
    """`data` as a DatasetManifest (a path: its manifest read now)."""
    return data if isinstance(data, DatasetManifest) else DatasetManifest.open(data)


def dataset_tokenizer(data: Dataset) -> LoadedTokenizer:
    """The tokenizer a dataset was made with, found through its manifest (a relative path is taken from
    the dataset) and checked against its sha256."""
    from data_tools.train_tokenizer import LoadedTokenizer

    d = opened(data)
    data_dir, entry = d.path, d.tokenizer_entry
    tok_dir = data_dir / entry.get("path", "tokenizer")
    tok = LoadedTokenizer.load(tok_dir)
    if tok.sha256 != entry["sha256"]:
        raise DataError(
            f"{tok_dir / 'tokenizer.json'} changed since {data_dir} was made with it (its sha256 differs "
            f"from {data_dir / MANIFEST}): restore that tokenizer, or preprocess the data again with "
            "this one."
        )
    if "eod_id" in entry and entry["eod_id"] != tok.eod:
        raise DataError(f"{data_dir / MANIFEST} says eod_id {entry['eod_id']}, {tok_dir} gives {tok.eod}")
    return tok


def manifest_hash(data: Dataset) -> str:
    """A hash of what the data is (tokenizer and every shard's sha256), for checkpoints to compare."""
    manifest = opened(data).manifest
    key = {
        "tokenizer": manifest["tokenizer"]["sha256"],
        "shards": {s: [x["sha256"] for x in v["shards"]] for s, v in sorted(manifest["splits"].items())},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def verify_dataset(data: Dataset, *, progress: bool = True, prefixes: Collection[str] | None = None) -> None:
    """Check every shard's `.bin` and `.idx` against the manifest (size and sha256) and each index
    against its `.bin` (IndexedDataset's checks). Raises DataError naming each bad file, the expected and
    the actual hash, and the command that regenerates the dataset.

    Hashing reads every byte once (a tqdm bar over bytes unless `progress` is False); what it found is
    recorded in `VERIFIED` inside `data_dir`, so a later call hashes only files whose size, mtime, ctime or
    inode changed; processes that verify one directory at once (ranks, hosts on a shared filesystem) hash
    each file once. A directory that cannot be written is verified all the same, without the record.
    `prefixes`: check only these shards (names such as `train_00000`)."""
    d = opened(data)
    data_dir, manifest = d.path, d.manifest
    shards = [
        (split, shard)
        for split, info in sorted(manifest["splits"].items())
        for shard in info["shards"]
        if prefixes is None or shard["prefix"] in prefixes
    ]
    problems: dict[str, str] = {}  # shard prefix -> what is wrong (the first problem found)
    for split, shard in shards:
        if problem := _size_problem(data_dir, split, shard):
            problems[shard["prefix"]] = problem
    hashes = _hashes(data_dir, manifest, [s for _, s in shards if s["prefix"] not in problems], progress)
    for split, shard in shards:
        prefix = shard["prefix"]
        for ext, sha_key in ((".bin", "sha256"), (".idx", "idx_sha256")):
            actual, expected = hashes.get(prefix + ext), shard.get(sha_key)
            if prefix not in problems and expected is not None and actual != expected:
                problems[prefix] = (
                    f"{data_dir / (prefix + ext)}: sha256 {actual}, but {MANIFEST} records {expected} "
                    f"(shard {prefix} of the {split} split): the file is corrupt or was changed"
                )
        # Manifests of 0.1.0 do not hash the index: IndexedDataset's checks and the counts cover it.
        if (
            prefix not in problems
            and "idx_sha256" not in shard
            and (problem := _check_index(data_dir, shard))
        ):
            problems[prefix] = problem
    if problems:
        raise DataError("\n".join(problems.values()) + "\n" + regenerate_hint(data_dir, manifest))


def check_shards(data: Dataset, vocab_size: int | None = None) -> None:
    """The checks that read no shard's tokens, for every start (also where hashing is skipped): each
    `.bin` and `.idx` exists with the manifest's size, each index fits its `.bin` (IndexedDataset's
    layout checks, the counts) and, where given, no shard holds a token id the model's `vocab_size` cannot
    embed (from the `max_token` the writer recorded). Raises DataError naming every bad file and the fix."""
    d = opened(data)
    data_dir, manifest = d.path, d.manifest
    limits = [
        (vocab_size, "the model's vocabulary"),
        (manifest["tokenizer"].get("vocab_size"), "its tokenizer"),
    ]
    problems = []
    for split, info in sorted(manifest["splits"].items()):
        for shard in info["shards"]:
            problem = _size_problem(data_dir, split, shard) or _check_index(data_dir, shard)
            top = shard.get("max_token")
            over = [(n, what) for n, what in limits if n is not None and top is not None and top >= n]
            if problem is None and over:
                n, what = over[0]
                problem = (
                    f"{data_dir / shard['prefix']}.bin: holds token id {top} (recorded in {MANIFEST}), but "
                    f"{what} has {n} ids (0-{n - 1}): the shard was not tokenized with the tokenizer its "
                    "manifest names"
                )
            if problem:
                problems.append(problem)
    if problems:
        raise DataError("\n".join(problems) + "\n" + regenerate_hint(data_dir, manifest))


def _size_problem(data_dir: Path, split: str, shard: dict[str, Any]) -> str | None:
    """A missing file, or one whose size is not the manifest's; None if both files are as recorded."""
    for ext, size_key in ((".bin", "bin_bytes"), (".idx", "idx_bytes")):
        path, where = data_dir / (shard["prefix"] + ext), f"shard {shard['prefix']} of the {split} split"
        try:
            size = path.stat().st_size
        except OSError as e:
            return f"{path}: {e.strerror} ({where})"
        if size != shard.get(size_key, size):
            return f"{path}: {size} bytes, {MANIFEST} records {shard[size_key]} ({where})"
    return None


def _check_index(data_dir: Path, shard: dict[str, Any]) -> str | None:
    """What is wrong with the shard's index (its layout, its agreement with the .bin and with the
    manifest's counts), or None."""
    prefix = data_dir / shard["prefix"]
    try:
        ds = IndexedDataset(prefix)
    except DataError as e:
        return str(e).split(" HINT:")[0]
    tokens = int(ds.sizes.sum(dtype=np.int64))
    if (tokens, ds.num_documents) != (shard["tokens"], shard["documents"]):
        return (
            f"{prefix}: {tokens} tokens in {ds.num_documents} documents, {MANIFEST} records "
            f"{shard['tokens']} in {shard['documents']}"
        )
    return None


def regenerate_hint(data_dir: Path, manifest: dict[str, Any]) -> str:
    """The command that rebuilds the dataset in `data_dir`, from what its manifest records."""
    sources = [s for s in manifest.get("sources", []) if not s.startswith("stdlib:")]
    inputs = f" --input {' '.join(sources)}" if len(sources) <= 3 else f" --input <the sources in {MANIFEST}>"
    tok = manifest["tokenizer"].get("path", "tokenizer")
    tokenizer = f" --tokenizer {tok}" if os.path.isabs(tok) else ""
    return (
        f"HINT: regenerate the dataset with `codeparrot-preprocess{inputs}{tokenizer} --output {data_dir} "
        f"--overwrite` and the cleaning options recorded in {data_dir / MANIFEST} (config)."
    )


def _hashes(
    data_dir: Path, manifest: dict[str, Any], shards: list[dict[str, Any]], progress: bool
) -> dict[str, str]:
    """File name -> sha256 for the .bin and .idx of `shards`: from the VERIFIED record where the file's
    key (size, mtime, ctime, inode) is the one recorded, else hashed under the directory's claim (one
    process hashes, the others sharing the directory wait for its record; data_tools.hashing)."""
    names = [shard["prefix"] + ext for shard in shards for ext in (".bin", ".idx")]
    record, to_hash = _known(data_dir, names)
    if not to_hash:
        return {name: entry["sha256"] for name, entry in record.items()}
    with hashing.claimed(data_dir) as claim:
        record, to_hash = _known(data_dir, names)  # the previous holder may have hashed them
        total = sum(key["size"] for key in to_hash.values())
        with _progress(total, f"verify {data_dir}", progress and bool(to_hash)) as bar:
            lock, started = threading.Lock(), time.monotonic()

            def on_read(n: int) -> None:
                with lock:
                    bar.update(n)
                if claim is not None:
                    claim.beat()

            paths = [data_dir / name for name in to_hash]
            for path, sha in hashing.hash_files(paths, on_read, sha=sha256_file).items():
                record[path.name] = to_hash[path.name] | {"sha256": sha}
        if to_hash:
            seconds = time.monotonic() - started
            logger.info(
                "%s: hashed %d files, %.1f MB in %.1f s (%.0f MB/s)",
                data_dir,
                len(to_hash),
                total / 1e6,
                seconds,
                total / 1e6 / max(seconds, 1e-9),
            )
            _update_record(data_dir, manifest, record)
    return {name: entry["sha256"] for name, entry in record.items()}


def _known(data_dir: Path, names: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """(name -> recorded entry for files whose key is unchanged, name -> current key of the others)."""
    known = hashing.load_record(data_dir / VERIFIED)
    record, to_hash = {}, {}
    for name in names:
        now = hashing.file_key(data_dir / name)
        old = known.get(name)
        if old is not None and all(old[k] == now[k] for k in hashing.RECORD_KEYS):
            record[name] = old
        else:
            to_hash[name] = now
    return record, to_hash


def _update_record(data_dir: Path, manifest: dict[str, Any], record: dict[str, dict[str, Any]]) -> None:
    """Merge `record` into the VERIFIED record, dropping files the manifest no longer lists."""
    in_manifest = {
        s["prefix"] + ext
        for v in manifest["splits"].values()
        for s in v["shards"]
        for ext in (".bin", ".idx")
    }
    known = hashing.load_record(data_dir / VERIFIED)
    hashing.save_record(data_dir / VERIFIED, {n: e for n, e in known.items() if n in in_manifest} | record)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not (enabled and total))


def sha256_file(path: Path, on_read: Callable[[int], Any] = lambda n: None) -> str:
    """The sha256 of a file, read 16 MiB at a time; `on_read(n)` after each read."""
    return hashing.sha256_file(path, on_read)
