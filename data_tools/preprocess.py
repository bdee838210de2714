"""Corpus -> cleaned, deduplicated, tokenised MMIDIDX shards plus a manifest: the whole offline job.

    codeparrot-preprocess --output data/                         # the standard library, tokenizer trained
    codeparrot-preprocess --input corpus/*.jsonl.zst --tokenizer tok/ --output data/ --workers 32
    codeparrot-preprocess --input corpus/ --tokenizer tok/ --output data/  # every .jsonl[.gz|.zst] under it
    codeparrot-preprocess --tokenize-only --input corpus.jsonl --tokenizer tok/ --output data/

Steps: read the inputs (streamed), clean and deduplicate them in worker processes (removing, by default,
the documents that contain a HumanEval problem: data_tools/decontaminate.py, --no-decontaminate; each
removal is logged with the problem's id and counted in report.json), train a byte-level BPE
tokenizer on the cleaned training split unless `--tokenizer` is given, tokenise in the workers, append the
end-of-document token, and write `train_NNNNN` / `valid_NNNNN` shard pairs (`.bin`/`.idx`), then
`manifest.json`. The workers encode with tiktoken where it gives exactly the `tokenizers` library's ids,
several times faster: checked at start on the tokenizer and the first documents, with a logged fallback
(`--encoder`, data_tools.encode.choose_encoder); report.json names the library. The shards are the same.

`--tokenize-only` does the work of Megatron-LM's tools/preprocess_data.py: read, tokenise each document with
the given tokenizer, append the end-of-document token, write the shards. No filters, no decontamination,
no dedup, no tokenizer training; each batch of records is decoded and tokenised in one worker call, and
content hashes are computed only for the validation split (none with `--valid-ratio 0`). Same shards,
manifest and resumability.

The output is written in units: a unit is the run of input documents whose tokens fill one shard
(`--shard-tokens`). A finished unit leaves its shards and a small record `units/NNNNN.json` (input position,
counts, hashes), each written atomically. A killed job loses at most the unit in progress: rerunning the
same command re-reads the finished part of the input only to rebuild the duplicate index, and continues
with the next unit. The output is identical to an uninterrupted run's.

On a cluster, the same job split across SLURM array tasks: data_tools/array_job.py
(codeparrot-preprocess-array, launch/slurm/preprocess.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from data_tools import __version__, cli
from data_tools.atomic import write_json_atomic
from data_tools.cli import Progress
from data_tools.encode import ENCODERS, MAX_PIECE_CHARS, choose_encoder
from data_tools.errors import DataError
from data_tools.filters import FILTER_NAMES
from data_tools.indexed_dataset import IndexedDatasetWriter
from data_tools.manifest import MANIFEST
from data_tools.parallel import (
    CleanConfig,
    Cleaned,
    Cleaner,
    CleanReport,
    benchmark,
    cleaned_batches,
    is_valid_split,
    make_executor,
    ordered_map,
    tokenize_batch,
    tokenize_records,
)
from data_tools.sources import (
    BATCH_CHARS,
    BATCH_DOCS,
    Problems,
    Record,
    SourceConfig,
    decode_record,
    iter_batches,
    iter_records,
    problems_summary,
)
from data_tools.train_tokenizer import (
    DEFAULT_VOCAB_SIZE,
    LoadedTokenizer,
    train_on_corpus,
    vocab_size_problem,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid")
DEFAULT_SHARD_TOKENS = 256 * 2**20  # 512 MiB of uint16 per training shard
# Tokenize-only batches (records, payload bytes): one worker call each, decoding and tokenising.
TOKENIZE_ONLY_BATCH = (256, 250_000)
# The first documents tiktoken is compared with tokenizers on (data_tools.encode): at most so many, and
# characters. Every merge is already checked through the vocabulary; the documents guard what a corpus
# has and the vocabulary lacks (special-token text, whitespace runs). 200K characters take 0.05 s; 1M took
# 0.66 s, a fifth of a standard-library tokenize-only job on 2 cores.
CHECK_DOCS, CHECK_CHARS = 16, 200_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    sources: SourceConfig = SourceConfig()
    clean: CleanConfig = CleanConfig()
    output: Path
    tokenizer: Path | None = None  # None: train one into output/tokenizer
    vocab_size: int = DEFAULT_VOCAB_SIZE
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    workers: int = 1
    show_progress: bool = True
    # Read, tokenise, append the end-of-document id, write: no filters, no dedup (Megatron-LM's
    # tools/preprocess_data.py). Needs `tokenizer` and `clean` = CleanConfig.tokenize_only(valid_ratio).
    tokenize_only: bool = False
    # The library that encodes: "auto" (tiktoken where it gives tokenizers' ids), "tiktoken", "tokenizers"
    # (data_tools.encode.choose_encoder). Not in the fingerprint: the shards are the same either way.
    encoder: str = "auto"

    def fingerprint(self, tok_sha: str) -> str:
        """What the output depends on; a resume into a directory written differently is refused."""
        key = self._cleaning_key() | {
            "tokenizer_sha256": tok_sha,
            "shard_tokens": self.shard_tokens,
            "batching": [BATCH_DOCS, BATCH_CHARS],
        }
        if self.tokenize_only:  # only then: the whole job's fingerprint stays what it was
            key |= {"tokenize_only": True, "batching": list(TOKENIZE_ONLY_BATCH)}
        return key_digest(key)

    def cleaning_fingerprint(self) -> str:
        """What the cleaned corpus depends on: the inputs and the cleaning settings."""
        return key_digest(self._cleaning_key())

    def _cleaning_key(self) -> dict[str, Any]:
        source_config = dataclasses.asdict(self.sources) | {"inputs": None}
        if source_config["dir_format"] == "auto":  # the default: fingerprints stay what they were
            del source_config["dir_format"]
        clean = self.clean.to_dict()
        key = {"sources": self.sources.describe(), "source_config": source_config, "clean": clean}
        if self.clean.filters.decontaminate:  # the benchmark's problems and the matching rule
            key["decontamination"] = benchmark(self.clean).describe()
        else:  # off: fingerprints stay what they were before decontamination
            del clean["filters"]["decontaminate"]
        return key


def key_digest(key: Any) -> str:
    """A short hash of a JSON-able value: how a job's settings are compared with a directory's."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def first_documents(sources: SourceConfig, docs: int, chars: int) -> Iterator[str]:
    """The first `docs` good documents of the inputs, cut to `chars` characters in all and MAX_PIECE_CHARS
    each (the tokenizer's memory), read when iterated: what the encoders are compared on before the job."""
    records = iter_records(sources, Problems(log=False))
    try:
        for rec in records:
            text, _ = decode_record(rec, sources)
            if text is not None:
                text = text[: min(chars, MAX_PIECE_CHARS)]
                yield text
                docs, chars = docs - 1, chars - len(text)
                if docs == 0 or chars == 0:
                    return
    finally:
        records.close()


class _Unit:
    """The shards of one unit being written: one writer per split, opened on first use."""

    def __init__(self, out: Path, index: int, dtype: np.dtype, encoder: str) -> None:
        self.out, self.index, self.dtype, self.encoder = out, index, dtype, encoder
        self.writers: dict[str, IndexedDatasetWriter] = {}
        self.tokens = 0
        self.cpt_removed = {"docs": 0, "bytes": 0}

    def add(self, split: str, flat: np.ndarray, lengths: np.ndarray) -> None:
        if split not in self.writers:
            self.writers[split] = IndexedDatasetWriter(self.out / f"{split}_{self.index:05d}", self.dtype)
        self.writers[split].add_documents(flat, lengths)
        self.tokens += len(flat)

    def finalize(self, input_docs_end: int, fingerprint: str) -> dict[str, Any]:
        shards = {
            split: {"prefix": w.prefix.name, **w.finalize()} for split, w in sorted(self.writers.items())
        }
        record = {
            "unit": self.index,
            "fingerprint": fingerprint,
            "input_docs_end": input_docs_end,
            "shards": shards,
            "chars_per_token_removed": self.cpt_removed,
            "encoder": self.encoder,  # the library that encoded it (the same ids either way)
        }
        write_json_atomic(self.out / "units" / f"{self.index:05d}.json", record)
        return record

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def _finished_units(out: Path, fingerprint: str) -> list[dict[str, Any]]:
    """The records of finished units 0..k-1 (contiguous), after checking they belong to this job."""
    records = []
    for i in range(1_000_000):
        path = out / "units" / f"{i:05d}.json"
        if not path.exists():
            break
        record = json.loads(path.read_text())
        if record["fingerprint"] != fingerprint:
            raise DataError(
                f"{out}: holds shards written with other inputs, cleaning settings or tokenizer "
                f"(fingerprint {record['fingerprint']} in {path}, this job's is {fingerprint}). "
                "Use another --output directory, or add --overwrite to replace them."
            )
        for shard in record["shards"].values():
            for ext in (".bin", ".idx"):
                if not (out / (shard["prefix"] + ext)).exists():
                    raise DataError(
                        f"{out / (shard['prefix'] + ext)}: missing, but {path} says it is finished. "
                        "Rerun with --overwrite to rebuild the dataset."
                    )
        records.append(record)
    return records


_SHARD_FILE = re.compile(r"^(?:train|valid)_(\d+)\.(?:bin|idx)(?:\.tmp)?$")


def _clear_unfinished(out: Path, first_unfinished: int) -> None:
    """Delete shard files (and half-written ones) of units from `first_unfinished` on."""
    for path in out.iterdir():
        match = _SHARD_FILE.match(path.name)
        if match and (path.name.endswith(".tmp") or int(match[1]) >= first_unfinished):
            path.unlink()


def clear_dataset(out: Path, tokenizer: bool = True) -> None:
    """Delete a dataset written in `out`: shards (finished or not), unit records, tokenizer (unless not
    `tokenizer`), manifest and report. Other files are left alone."""
    for name in ("units", *(["tokenizer"] if tokenizer else []), MANIFEST, "report.json"):
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    _clear_unfinished(out, 0)


class Encoded(NamedTuple):
    """One batch of tokenised documents, ready to write."""

    end: int  # input records read up to the end of this batch
    flat: np.ndarray  # the documents' token ids back to back, each followed by the end-of-document id
    lengths: np.ndarray  # tokens per document, end-of-document included
    valid: np.ndarray  # bool per document: goes to the validation split
    keep: np.ndarray  # bool per document: passed the chars/token filter
    removed_docs: int  # documents removed by the chars/token filter
    removed_bytes: int


def _encoded_batches(
    cfg: PreprocessConfig, executor: Executor, cleaned: Cleaned, skip: int, tok: LoadedTokenizer
) -> Iterator[Encoded]:
    """The whole job's batches: tokenise the kept documents past `skip` in the workers, then apply the
    chars/token filter and the split here."""
    min_cpt, dtype = cfg.clean.filters.chars_per_token, tok.dtype

    def fresh() -> Cleaned:
        consumed = 0
        for n_in, kept, hashes in cleaned:
            consumed += n_in
            if consumed > skip:  # batches are deterministic: a finished unit ends on a batch boundary
                yield consumed, kept, hashes

    submit = lambda item: executor.submit(
        tokenize_records, [k.record for k in item[1]], cfg.sources, tok.eod, dtype.str
    )
    for (end, kept, hashes), (flat, lengths) in ordered_map(
        submit, fresh(), 2 * max(cfg.workers, 1), records_of=lambda item: [k.record for k in item[1]]
    ):
        keep = np.ones(len(kept), dtype=bool)
        removed_docs = removed_bytes = 0
        if min_cpt is not None:
            for i, doc in enumerate(kept):
                if doc.nchars / max(int(lengths[i]) - 1, 1) < min_cpt:
                    keep[i] = False
                    removed_docs += 1
                    removed_bytes += doc.nbytes
        valid = _valid_mask(hashes, cfg.clean.valid_ratio, len(kept))
        yield Encoded(end, flat, lengths, valid, keep, removed_docs, removed_bytes)


def _valid_mask(hashes: list[int] | None, valid_ratio: float, n: int) -> np.ndarray:
    """Which of `n` documents go to the validation split, by content hash (None: no split asked for)."""
    if hashes is None:
        return np.zeros(n, dtype=bool)
    return np.fromiter((is_valid_split(h, valid_ratio) for h in hashes), bool, n)


def _tokenize_only_batches(
    cfg: PreprocessConfig,
    executor: Executor,
    skip: int,
    tok: LoadedTokenizer,
    problems: Problems,
    report: CleanReport,
) -> Iterator[Encoded]:
    """The tokenize-only job's batches: each batch of records decoded and tokenised in one worker call,
    every good document kept. Batches before `skip` (a resumed job's finished part) are only decoded, for
    the report's counts. Content hashes are computed only for a validation split (--valid-ratio > 0)."""
    want_hashes = cfg.clean.valid_ratio > 0

    def positioned() -> Iterator[tuple[int, list[Record]]]:
        start = 0
        for batch in iter_batches(iter_records(cfg.sources, problems), *TOKENIZE_ONLY_BATCH):
            yield start, batch
            start += len(batch)

    submit = lambda item: executor.submit(
        tokenize_batch,
        item[1],
        cfg.sources,
        tok.eod,
        tok.dtype.str,
        want_hashes,
        item[0] + len(item[1]) > skip,
    )
    for (start, batch), done in ordered_map(
        submit, positioned(), 2 * max(cfg.workers, 1), records_of=lambda item: item[1]
    ):
        for problem in done.problems:
            problems.add(*problem)
        report.input_docs += done.docs  # every good document is kept
        report.kept_docs += done.docs
        report.input_bytes += done.nbytes
        report.kept_bytes += done.nbytes
        end = start + len(batch)
        if end > skip:  # batches are deterministic: a finished unit ends on a batch boundary
            valid = _valid_mask(done.hashes, cfg.clean.valid_ratio, done.docs)
            yield Encoded(end, done.flat, done.lengths, valid, np.ones(done.docs, dtype=bool), 0, 0)


def _write_batches(
    cfg: PreprocessConfig,
    batches: Iterator[Encoded],
    skip: int,
    dtype: np.dtype,
    fingerprint: str,
    units_done: int,
    input_bytes: Callable[[], int],
    encoder: str,
) -> list[dict[str, Any]]:
    """The write loop: split each batch's documents into train and valid, fill units of about
    cfg.shard_tokens tokens; returns the records of the units it finished. `encoder`: the library that
    encoded the batches, for the records."""
    out = cfg.output
    records: list[dict[str, Any]] = []
    unit = _Unit(out, units_done, dtype, encoder)
    progress = Progress(cfg.show_progress)
    last_end = skip
    try:
        for b in batches:
            unit.cpt_removed["docs"] += b.removed_docs
            unit.cpt_removed["bytes"] += b.removed_bytes
            for split, mask in (("train", b.keep & ~b.valid), ("valid", b.keep & b.valid)):
                if not mask.any():
                    continue
                if mask.all():  # the whole batch (the usual case): no copy
                    unit.add(split, b.flat, b.lengths)
                else:
                    unit.add(split, b.flat[np.repeat(mask, b.lengths)], b.lengths[mask])
            progress.update(b.end - last_end, int(b.lengths[b.keep].sum()), input_bytes())
            last_end = b.end
            if unit.tokens >= cfg.shard_tokens:
                records.append(unit.finalize(b.end, fingerprint))
                unit = _Unit(out, unit.index + 1, dtype, encoder)
        # The last unit is kept when it has shards, or documents removed for chars/token (counted in the
        # report from the records), or when it is the only one.
        if unit.writers or unit.cpt_removed["docs"] or not (records or units_done):
            records.append(unit.finalize(last_end, fingerprint))
    except BaseException:
        unit.abort()
        raise
    finally:
        progress.close()
    return records


def preprocess(cfg: PreprocessConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole job (resuming a killed one in the same directory); returns the manifest."""
    check_config(cfg)
    benchmark(cfg.clean)  # loaded before any work: a missing package fails now, and the workers inherit it
    out = cfg.output
    # --overwrite deletes out/tokenizer: a --tokenizer there is an input it would destroy.
    inputs = [*cfg.sources.inputs, *([cfg.tokenizer] if overwrite and cfg.tokenizer else [])]
    cli.refuse_writing_inputs(inputs, out, is_dir=True)
    cli.prepare_output_dir(out)
    with cli.output_lock(out):
        return _preprocess_locked(cfg, overwrite)


def _preprocess_locked(cfg: PreprocessConfig, overwrite: bool) -> dict[str, Any]:
    """preprocess() once it holds the output directory's lock."""
    out = cfg.output
    if overwrite:
        clear_dataset(out)
    tok_dir = cfg.tokenizer or out / "tokenizer"
    trained_here = cfg.tokenizer is None and not (tok_dir / "tokenizer.json").exists()
    if trained_here:
        tmp = out / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        train_on_corpus(cfg.sources, cfg.clean, tmp, cfg.vocab_size, cfg.workers, cfg.show_progress)
        os.replace(tmp, tok_dir)
    tok = LoadedTokenizer.load(tok_dir)
    fingerprint = cfg.fingerprint(tok.sha256)
    # Trained here: training's pass over the corpus logged its problems and removals already.
    problems, cleaner = Problems(log=not trained_here), Cleaner(cfg.clean, log=not trained_here)

    def encoded(executor: Executor, skip: int) -> Iterator[Encoded]:
        if cfg.tokenize_only:
            return _tokenize_only_batches(cfg, executor, skip, tok, problems, cleaner.report)
        batches = iter_batches(iter_records(cfg.sources, problems), BATCH_DOCS, BATCH_CHARS)
        window = 2 * max(cfg.workers, 1)
        cleaned = cleaned_batches(executor, batches, cleaner, cfg.sources, problems, window, want_text=False)
        return _encoded_batches(cfg, executor, cleaned, skip, tok)

    records = _write_units(cfg, tok, fingerprint, encoded, lambda: cleaner.report.input_bytes)
    return write_manifest(cfg, records, cleaner.to_dict(problems), tok, fingerprint)


def check_config(cfg: PreprocessConfig) -> None:
    """Raise DataError naming every setting out of its range or contradicting another (tokenize-only
    mode's needs), before any input is read."""
    sizes = [vocab_size_problem(cfg.vocab_size)] if cfg.tokenizer is None else []
    if cfg.encoder not in ENCODERS:
        sizes.append(f"--encoder ({cfg.encoder!r}) must be one of {', '.join(ENCODERS)}")
    if cfg.shard_tokens < 1:
        sizes.append(
            f"--shard-tokens ({cfg.shard_tokens}) must be at least 1 (tokens per shard; the default is "
            f"{DEFAULT_SHARD_TOKENS:,})"
        )
    sizes = [problem for problem in sizes if problem]
    if sizes:
        raise DataError("; ".join(sizes) + ".")
    if not cfg.tokenize_only:
        return
    wrong = []
    if cfg.tokenizer is None:
        wrong.append(
            "it needs an existing tokenizer (--tokenizer DIR): it trains none. Train one with "
            "`codeparrot-train-tokenizer`, or drop --tokenize-only to train one as part of the job"
        )
    c = cfg.clean
    on = [f for f, v in dataclasses.asdict(c.filters).items() if f in FILTER_NAMES and v not in (None, False)]
    others = {"decontaminate": c.filters.decontaminate, "exact dedup": c.exact_dedup}
    on += [name for name, v in (others | {"near dedup": c.near_dedup}).items() if v]
    if on:
        wrong.append(
            f"it runs no filters and no dedup, but these are on: {', '.join(on)} (use "
            "CleanConfig.tokenize_only(), or drop --tokenize-only to clean the corpus)"
        )
    if wrong:
        raise DataError("--tokenize-only: " + "; ".join(wrong) + ".")


def write_units(
    cfg: PreprocessConfig,
    tok: LoadedTokenizer,
    fingerprint: str,
    cleaned: Callable[[Executor], Cleaned],
    input_bytes: Callable[[], int],
    clear_other: bool = False,
) -> list[dict[str, Any]]:
    """Tokenise the cleaned corpus (`cleaned(executor)`, whose workers also tokenise) into units in
    cfg.output, after the finished units of an earlier run of the same job; returns every unit's record.
    `input_bytes()`: the input read so far, for the progress bar. Units written by another job (another
    fingerprint) are refused, or deleted with `clear_other`."""
    encoded = lambda executor, skip: _encoded_batches(cfg, executor, cleaned(executor), skip, tok)
    return _write_units(cfg, tok, fingerprint, encoded, input_bytes, clear_other)


def _write_units(
    cfg: PreprocessConfig,
    tok: LoadedTokenizer,
    fingerprint: str,
    encoded: Callable[[Executor, int], Iterator[Encoded]],
    input_bytes: Callable[[], int],
    clear_other: bool = False,
) -> list[dict[str, Any]]:
    """`write_units` from tokenised batches: `encoded(executor, skip)` yields those past input record
    `skip`."""
    out = cfg.output
    try:
        done = _finished_units(out, fingerprint)
    except DataError:
        if not clear_other:
            raise
        clear_dataset(out)
        done = []
    _clear_unfinished(out, len(done))
    skip = done[-1]["input_docs_end"] if done else 0
    if done:
        logger.info(
            "resuming: %d finished unit(s) kept; re-reading the first %d documents without writing them",
            len(done),
            skip,
        )
    sample = first_documents(cfg.sources, CHECK_DOCS, CHECK_CHARS)
    chosen = choose_encoder(tok.tokenizer, cfg.encoder, sample)
    executor = make_executor(cfg.workers, chosen.encoder)
    try:
        batches = encoded(executor, skip)
        written = _write_batches(
            cfg, batches, skip, tok.dtype, fingerprint, len(done), input_bytes, chosen.backend
        )
        return done + written
    finally:
        executor.shutdown(cancel_futures=True)


def write_manifest(
    cfg: PreprocessConfig,
    records: list[dict[str, Any]],
    report: dict[str, Any],
    tok: LoadedTokenizer,
    fingerprint: str,
) -> dict[str, Any]:
    """Finish the dataset in cfg.output from its units' `records` and the cleaning `report`
    (Cleaner.to_dict): add the chars/token removals to the report, write report.json and manifest.json.
    Raises DataError when no document is left."""
    out = cfg.output
    removed = {k: sum(r["chars_per_token_removed"][k] for r in records) for k in ("docs", "bytes")}
    if removed["docs"]:  # chars/token removals happen after tokenisation: added to the report here
        counts = report["removed"].setdefault("chars_per_token", {"docs": 0, "bytes": 0})
        for k, n in removed.items():
            counts[k] += n
            report[f"kept_{k}"] -= n
        report["removed"] = dict(sorted(report["removed"].items()))
    # Units written before the encoder was recorded were encoded by tokenizers.
    report["encoders"] = sorted({r.get("encoder", "tokenizers") for r in records})
    write_json_atomic(out / "report.json", report)
    if report["bad_input"]["counts"]:
        logger.warning("%s; details in %s", problems_summary(report["bad_input"]), out / "report.json")
    manifest = _manifest(cfg, records, report, tok, fingerprint)
    if manifest["splits"]["train"]["documents"] + manifest["splits"]["valid"]["documents"] == 0:
        raise DataError(
            f"no documents left: {report['input_docs']} read, all removed or unreadable (see "
            f"{out / 'report.json'} for counts and examples per reason). Check --input and --text-field, "
            "or relax the filters."
        )
    write_json_atomic(out / MANIFEST, manifest)
    s = manifest["splits"]
    logger.info(
        "wrote %s: train %d docs / %d tokens, valid %d docs / %d tokens in %d shard pair(s)",
        out / MANIFEST,
        s["train"]["documents"],
        s["train"]["tokens"],
        s["valid"]["documents"],
        s["valid"]["tokens"],
        len(records),
    )
    return manifest


def _manifest(cfg, records, report, tok: LoadedTokenizer, fingerprint) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split in SPLITS:
        shards = [r["shards"][split] for r in records if split in r["shards"]]
        splits[split] = {
            "tokens": sum(s["tokens"] for s in shards),
            "documents": sum(s["documents"] for s in shards),
            "shards": shards,
        }
    return {
        "format": "MMIDIDX",
        "format_version": 1,
        "tool": "codeparrot-ds data_tools.preprocess",
        "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": tok.dtype.name,
        "tokenizer": {
            "path": os.path.relpath(tok.dir, cfg.output)
            if cfg.tokenizer is None
            else str(Path(tok.dir).resolve()),
            "sha256": tok.sha256,
            "vocab_size": tok.vocab_size,
            "eod_id": tok.eod,
        },
        "sources": cfg.sources.describe(),
        "config": {
            "clean": cfg.clean.to_dict(),
            "shard_tokens": cfg.shard_tokens,
            "fingerprint": fingerprint,
        },
        "splits": splits,
        "report": report,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options codeparrot-preprocess adds to the data tools' input and cleaning ones (the array job,
    data_tools.array_job, takes the same)."""
    g = parser.add_argument_group("output")
    g.add_argument("--output", required=True, type=Path, help="dataset directory (shards, manifest, report)")
    g.add_argument("--tokenizer", type=Path, help="an existing tokenizer directory (default: train one)")
    g.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="when training the tokenizer")
    g.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard (about)")
    g.add_argument(
        "--encoder",
        choices=ENCODERS,
        default="auto",
        help="the library that encodes: tiktoken where it gives the same ids as tokenizers, checked on a "
        "sample at start (auto, the default), or either one (tiktoken fails rather than fall back)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --output")
    cli.add_common_args(parser)


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    tokenize_only = getattr(args, "tokenize_only", False)
    return PreprocessConfig(
        sources=cli.source_config(args),
        clean=CleanConfig.tokenize_only(args.valid_ratio) if tokenize_only else cli.clean_config(args),
        output=args.output,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        show_progress=not args.quiet,
        tokenize_only=tokenize_only,
        encoder=args.encoder,
    )


# Options that tokenize-only mode has no use for (it trains no tokenizer and cleans nothing); --no-filters,
# --no-decontaminate, --no-dedup and --valid-ratio agree with it.
_NOT_FOR_TOKENIZE_ONLY = (
    "vocab_size",
    "disable_filter",
    "max_control_fraction",
    "max_line_length",
    "mean_line_length",
    "min_alphanumeric_fraction",
    "min_chars_per_token",
    "near_dedup",
    "near_dedup_threshold",
)


def _check_tokenize_only_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Raise DataError naming the options given with --tokenize-only that it would ignore."""
    given = [d for d in _NOT_FOR_TOKENIZE_ONLY if getattr(args, d) != parser.get_default(d)]
    if given:
        options = ", ".join("--" + d.replace("_", "-") for d in given)
        raise DataError(
            f"--tokenize-only writes every document's tokens, with no filter, dedup or tokenizer training: "
            f"{options} would do nothing. Drop {'them' if len(given) > 1 else 'it'}, or drop --tokenize-only."
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.tool_parser(
        "codeparrot-preprocess",
        __doc__,
        example="codeparrot-preprocess --output runs/demo/data --vocab-size 8192   # the standard library\n"
        "codeparrot-preprocess --input /data/github-code --output /data/shards --vocab-size 32768",
    )
    add_arguments(parser)
    parser.add_argument(
        "--tokenize-only",
        action="store_true",
        help="read, tokenise with --tokenizer, append the end-of-document token, write: no filters, no "
        "decontamination, no dedup, no tokenizer training (Megatron-LM's tools/preprocess_data.py); "
        "--valid-ratio still splits",
    )
    args = parser.parse_args(argv)

    def job() -> dict[str, Any]:
        if args.tokenize_only:
            _check_tokenize_only_args(args, parser)
        return preprocess(config_from_args(args), overwrite=args.overwrite)

    return cli.run(job, args)


if __name__ == "__main__":
    sys.exit(main())
