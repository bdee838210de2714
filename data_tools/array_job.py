"""codeparrot-preprocess split across N independent tasks (a SLURM job array: a node per task, sharing a
filesystem), in four phases. The dataset is the single-process job's: the same documents in the same order,
the same token stream per split, the same tokenizer and the same report.

    codeparrot-preprocess-array scan   --work W --task I --tasks N <codeparrot-preprocess flags>  # I=0..N-1
    codeparrot-preprocess-array keep   --work W --tasks N <codeparrot-preprocess flags>           # once
    codeparrot-preprocess-array encode --work W --task I --tasks N <codeparrot-preprocess flags>  # I=0..N-1
    codeparrot-preprocess-array merge  --work W --tasks N <codeparrot-preprocess flags>           # once

Every phase takes the same flags, those of codeparrot-preprocess (--output included), and refuses results
written with other ones. --task and --tasks default to $SLURM_ARRAY_TASK_ID and $SLURM_ARRAY_TASK_COUNT;
launch/slurm/preprocess.sh submits the four phases as chained SLURM jobs.

scan    Task I takes its share of the inputs: a contiguous range of the input files in the single-process
        job's order, balanced by size (a file is never split). It reads, decodes, filters (decontamination
        included) and hashes every record (MinHash signatures too with --near-dedup) and writes a row per
        record to W/scan/. Nothing is decided yet.
keep    Replays the rows of every task, task after task (the single-process job's input order), through
        the same Cleaner: duplicates are found across all tasks and the first occurrence wins; each
        document removed for a benchmark problem is logged. Writes each task's keep mask and the cleaning
        report, then trains the tokenizer on the kept documents as codeparrot-preprocess does (unless
        --tokenizer is given): the same documents in the same order.
encode  Task I reads its inputs again and tokenises its kept documents into shards in W/encode/
        (resumable after a kill, like codeparrot-preprocess).
merge   Links (or copies) the shards of every task, in task order, into --output as train_NNNNN/valid_NNNNN,
        with the tokenizer, report.json and manifest.json. Shard boundaries differ from the single-process
        job's, as each task cuts its own; each split's token stream is the same.

A task marks itself done last. A phase names the tasks it needs that have not finished, with the command
that runs them; a finished task that is run again with the same flags does nothing (scan, keep, encode) or
writes the same files again (merge), so submitting the whole chain again completes a partly failed job.
--overwrite lets merge replace another dataset in --output; --workers is per task.
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from cmdline.args import OneLineParser
from data_tools import cli
from data_tools.array_work import BAD, PASSED, ROW, Appender, ArrayJob, read_json, save_npy_atomic
from data_tools.atomic import replace_atomic, write_json_atomic
from data_tools.cli import Progress
from data_tools.decontaminate import REASON as DECONTAMINATE
from data_tools.errors import DataError
from data_tools.filters import FILTER_NAMES
from data_tools.manifest import MANIFEST, load_manifest
from data_tools.parallel import (
    Cleaned,
    Cleaner,
    Kept,
    benchmark,
    decode_records,
    make_executor,
    ordered_map,
    verdict_batches,
)
from data_tools.preprocess import (  # the job's settings, fingerprint rule and dataset writer
    add_arguments,
    clear_dataset,
    config_from_args,
    key_digest,
    write_manifest,
    write_units,
)
from data_tools.sources import (
    BATCH_CHARS,
    BATCH_DOCS,
    Problems,
    SourceConfig,
    iter_batches,
    iter_inputs,
    iter_records,
    location,
)
from data_tools.train_tokenizer import LoadedTokenizer, tokenizer_sha256, train_on_documents

logger = logging.getLogger(__name__)

PHASES = {
    "scan": "array task: read, filter and hash a share of the inputs",
    "keep": "one task: decide duplicates across all tasks, train the tokenizer",
    "encode": "array task: tokenise a share's kept documents into shards",
    "merge": "one task: gather every task's shards into one dataset in --output",
}


# ---- phase 1: scan -----------------------------------------------------------------------------------


def split_inputs(inputs: Sequence[tuple[str, Path]], tasks: int) -> list[tuple[int, int]]:
    """A contiguous range [start, end) of `inputs` per task, balanced by size on disk: an input goes to
    the task whose share holds its middle byte. Some ranges are empty when there are fewer inputs."""
    return _ranges([_size_on_disk(path) + 1 for _, path in inputs], tasks)  # +1: empty files count a little


def _ranges(sizes: Sequence[int], tasks: int) -> list[tuple[int, int]]:
    """split_inputs' ranges from the inputs' sizes (each +1)."""
    total, before, per_task = sum(sizes), 0, [0] * tasks
    for size in sizes:
        per_task[min(tasks - 1, (2 * before + size) * tasks // (2 * total))] += 1
        before += size
    ends = list(itertools.accumulate(per_task))
    return [(end - n, end) for end, n in zip(ends, per_task, strict=True)]


def _share(sources: SourceConfig, tasks: int) -> tuple[list[tuple[int, int]], int, str]:
    """split_inputs' ranges of the inputs, their number and their digest, from one streamed pass over
    them: what is held per input is its size (8 bytes), not its path, so a task's memory barely grows
    with the number of input files. The task then reads its range in a second pass (`_task_inputs`)."""
    sizes = array.array("Q")

    def sized() -> Iterator[tuple[str, Path]]:
        for kind, path in iter_inputs(sources):
            sizes.append(_size_on_disk(path) + 1)
            yield kind, path

    digest = _inputs_digest(sized())
    return _ranges(sizes, tasks), len(sizes), digest


def _task_inputs(sources: SourceConfig, start: int, end: int) -> Iterator[tuple[str, Path]]:
    """The inputs [start, end) of the single-process job's order, streamed."""
    return itertools.islice(iter_inputs(sources), start, end)


def _size_on_disk(path: Path) -> int:
    try:
        if path.is_dir():  # a saved HF dataset
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:  # unreadable or dangling: reported when reading it
        return 0


def _inputs_digest(inputs: Iterable[tuple[str, Path]]) -> str:
    """key_digest([[kind, path], ...]) of the inputs, hashed as they stream by (the same value: the JSON
    text of the list is written piece by piece)."""
    sha = hashlib.sha256(b"[")
    for i, (kind, path) in enumerate(inputs):
        sha.update((", " if i else "").encode() + json.dumps([kind, str(path)]).encode())
    sha.update(b"]")
    return sha.hexdigest()[:16]


def scan(job: ArrayJob, task: int) -> dict[str, Any]:
    """Phase 1, task `task`: a row per record of the task's inputs, and the task's bad-input report."""
    cfg = job.cfg
    cli.refuse_writing_inputs(cfg.sources.inputs, cfg.output, is_dir=True)
    cli.refuse_writing_inputs(cfg.sources.inputs, job.work, "--work", is_dir=True)
    cli.prepare_output_dir(job.work / "scan", "--work")
    cli.prepare_output_dir(cfg.output)  # a bad --output or --tokenizer fails now, not in a later phase
    if cfg.tokenizer is not None:
        LoadedTokenizer.load(cfg.tokenizer)
    ranges, count, digest = _share(cfg.sources, job.tasks)
    start, end = ranges[task]
    key = {
        "fingerprint": cfg.cleaning_fingerprint(),
        "tasks": job.tasks,
        "task": task,
        "inputs": digest,
        "inputs_range": [start, end],
        "row_dtype": [list(field) for field in ROW.descr],  # as JSON has it: rows of another layout rescan
    }
    if done := _already_done(job.scan_meta(task), key):
        return done
    logger.info("scan task %d/%d: inputs %d-%d of %d", task, job.tasks, start, end - 1, count)
    problems = Problems()
    inputs = _task_inputs(cfg.sources, start, end)
    meta = key | _scan_records(job, task, inputs, problems) | {"problems": problems.to_dict()}
    write_json_atomic(job.scan_meta(task), meta)
    logger.info(
        "scan task %d/%d: %d records -> %s", task, job.tasks, meta["rows"]["count"], job.scan_meta(task)
    )
    return meta


def _already_done(record: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A task's record if it finished with this `key`; otherwise None, and the record is deleted (so a
    task cut short while it rewrites its files is not taken for finished)."""
    done = read_json(record)
    if done is not None and all(done.get(k) == v for k, v in key.items()):
        logger.info("already done: %s", record)
        return done
    record.unlink(missing_ok=True)
    return None


def _scan_records(
    job: ArrayJob, task: int, inputs: Iterable[tuple[str, Path]], problems: Problems
) -> dict[str, Any]:
    """Read, filter and hash `inputs` in the workers; write the rows and signatures files. Returns their
    part of the task's record."""
    cfg, paths = job.cfg, {}
    rows, sigs = Appender(job.scan_file(task, "rows")), Appender(job.scan_file(task, "sigs"))
    filters = [*FILTER_NAMES, DECONTAMINATE]
    status_of = {name: i for i, name in enumerate(filters)} | {None: PASSED}
    index = benchmark(cfg.clean)  # loaded before the workers start: they inherit it
    benchmark_ids = list(index.ids) if index is not None else []
    problem_of = {problem: i for i, problem in enumerate(benchmark_ids)} | {None: -1}
    progress = Progress(cfg.show_progress, f"scan {task}/{job.tasks}")
    executor = make_executor(cfg.workers)
    try:
        batches = iter_batches(iter_records(cfg.sources, problems, inputs), BATCH_DOCS, BATCH_CHARS)
        window = 2 * max(cfg.workers, 1)
        for batch, verdicts in verdict_batches(executor, batches, cfg.clean, cfg.sources, window, False):
            out = np.zeros(len(batch), ROW)
            for j, (rec, v) in enumerate(zip(batch, verdicts, strict=True)):
                path = paths.setdefault(rec.path, len(paths))
                if v.problem is not None:
                    problems.add(*v.problem)
                    out[j] = (path, rec.line, 0, 0, 0, BAD, -1)
                else:
                    status, problem = status_of[v.failing], problem_of[v.contaminant]
                    out[j] = (path, rec.line, v.nbytes, v.nchars, v.content_hash, status, problem)
            rows.write(out)
            signatures = [v.signature for v in verdicts if v.signature is not None]
            if signatures:
                sigs.write(np.stack(signatures))
            progress.update(len(batch), 0, int(progress.bytes + out["nbytes"].sum()))
        return {
            "rows": rows.close(),
            "signatures": sigs.close(),
            "filters": filters,
            "benchmark_ids": benchmark_ids,
            "paths": list(paths),
        }
    except BaseException:
        rows.abort()
        sigs.abort()
        raise
    finally:
        executor.shutdown(cancel_futures=True)
        progress.close()


# ---- phase 2: keep -----------------------------------------------------------------------------------


def keep(job: ArrayJob) -> dict[str, Any]:
    """Phase 2: the keep mask of every task and the cleaning report, then the tokenizer (unless given)."""
    cfg = job.cfg
    metas = job.scan_records(range(job.tasks))
    key = {
        "fingerprint": cfg.cleaning_fingerprint(),
        "tasks": job.tasks,
        "scans": [[m["rows"]["sha256"], m["signatures"]["sha256"]] for m in metas],
        "tokenizer": None if cfg.tokenizer is None else str(cfg.tokenizer),
        "vocab_size": cfg.vocab_size,
    }
    if done := _already_done(job.keep_meta, key | {"tokenizer_sha256": _trained_tokenizer_sha(job)}):
        return done
    report, keep_sha = _decide(job, metas)
    logger.info(
        "keep: %d of %d documents kept; removed: %s",
        report["kept_docs"],
        report["input_docs"],
        ", ".join(f"{k} {v['docs']}" for k, v in report["removed"].items()) or "none",
    )
    if cfg.tokenizer is None:
        _train_tokenizer(job, metas, report)
    meta = key | {"tokenizer_sha256": _trained_tokenizer_sha(job), "keep_sha256": keep_sha, "report": report}
    write_json_atomic(job.keep_meta, meta)
    return meta


def _trained_tokenizer_sha(job: ArrayJob) -> str | None:
    """The sha256 of the tokenizer keep trained, None if there is none (or --tokenizer is given)."""
    trained = job.cfg.tokenizer is None and (job.tokenizer_dir / "tokenizer.json").exists()
    return tokenizer_sha256(job.tokenizer_dir) if trained else None


def _decide(job: ArrayJob, metas: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Every task's rows through one Cleaner, in task order; each task's keep mask saved. Returns the
    cleaning report (Cleaner.to_dict) and a hash of all the masks."""
    from tqdm import tqdm

    cfg = job.cfg
    cleaner, problems = Cleaner(cfg.clean), Problems(log=False)  # the scan tasks logged the problems
    keep_sha = hashlib.sha256()
    total = sum(m["rows"]["count"] for m in metas)
    bar = tqdm(total=total, desc="keep", unit=" docs", disable=not cfg.show_progress, mininterval=1.0)
    for task, meta in enumerate(metas):
        problems.extend(meta["problems"])
        rows, sigs = job.rows(task, meta), job.signatures(task, meta)
        paths, filters, benchmark_ids = meta["paths"], meta["filters"], meta["benchmark_ids"]
        mask, next_sig = np.zeros(len(rows), dtype=bool), 0
        for start in range(0, len(rows), 1 << 16):
            chunk = rows[start : start + (1 << 16)]
            columns = (chunk[k].tolist() for k in ("path", "line", "nbytes", "hash", "status", "problem"))
            for j, (path, line, nbytes, h, status, problem) in enumerate(zip(*columns, strict=True), start):
                if status == BAD:
                    continue
                sig = None
                if status == PASSED and cfg.clean.near_dedup:
                    sig, next_sig = np.array(sigs[next_sig]), next_sig + 1
                failing = None if status == PASSED else filters[status]
                contaminant = benchmark_ids[problem] if problem >= 0 else None
                mask[j] = cleaner.decide(paths[path], line, nbytes, h, failing, sig, contaminant)
            bar.update(len(chunk))
        save_npy_atomic(job.keep_mask(task), mask)
        keep_sha.update(mask.tobytes())
    bar.close()
    return cleaner.to_dict(problems), keep_sha.hexdigest()


def _train_tokenizer(job: ArrayJob, metas: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Train W/tokenizer on the kept documents of every task, in order: codeparrot-preprocess's training
    (train_on_documents) on the same documents."""
    cfg = job.cfg
    tmp, final = job.work / "tokenizer.tmp", job.work / "tokenizer"
    shutil.rmtree(tmp, ignore_errors=True)
    executor = make_executor(cfg.workers)
    try:
        train_on_documents(
            _kept_texts(job, metas, executor),
            cfg.clean.valid_ratio,
            tmp,
            cfg.vocab_size,
            cfg.show_progress,
            cleaning=lambda: report,
        )
    finally:
        executor.shutdown(cancel_futures=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _kept_texts(job: ArrayJob, metas: list[dict[str, Any]], executor: Executor) -> Iterator[tuple[str, int]]:
    """(text, content hash) of every kept document of every task, in order; decoded by the workers."""
    window = 2 * max(job.cfg.workers, 1)
    records_of = lambda item: [k.record for k in item[0]]
    submit = lambda item: executor.submit(decode_records, records_of(item), job.cfg.sources)
    for task, meta in enumerate(metas):
        batches = ((kept, hashes) for _, kept, hashes in _KeptRecords(job, task, meta) if kept)
        for (_, hashes), texts in ordered_map(submit, batches, window, records_of):
            yield from zip(texts, hashes, strict=True)


class _KeptRecords:
    """A task's records read again, in codeparrot-preprocess's batches: iterating gives, per batch, its
    size, its kept documents (by the keep mask) and their content hashes. Checks that the records are the
    ones scanned."""

    def __init__(self, job: ArrayJob, task: int, meta: dict[str, Any]) -> None:
        self.job, self.task, self.meta = job, task, meta
        self.input_bytes = 0  # of the records read so far, as the Cleaner counts them

    def __iter__(self) -> Cleaned:
        job, task, meta, cfg = self.job, self.task, self.meta, self.job.cfg
        if _inputs_digest(iter_inputs(cfg.sources)) != meta["inputs"]:
            raise self._changed("the list of input files differs")
        rows, paths = job.rows(task, meta), meta["paths"]
        mask = job.keep_mask_of(task, len(rows))
        start, end = meta["inputs_range"]
        records = iter_records(cfg.sources, Problems(log=False), _task_inputs(cfg.sources, start, end))
        n = 0
        for batch in iter_batches(records, BATCH_DOCS, BATCH_CHARS):
            if n + len(batch) > len(rows):
                raise self._changed(f"more than the {len(rows)} records scanned")
            chunk = rows[n : n + len(batch)]
            kept, hashes = [], []
            for i in np.flatnonzero(mask[n : n + len(batch)]).tolist():
                rec, row = batch[i], chunk[i]
                if (rec.path, rec.line) != (paths[row["path"]], row["line"]):
                    where = location(paths[row["path"]], int(row["line"]))
                    raise self._changed(f"{rec.location} is where the scan read {where}")
                kept.append(Kept(rec, None, int(row["nchars"]), int(row["nbytes"])))
                hashes.append(int(row["hash"]))
            n += len(batch)
            self.input_bytes += int(chunk["nbytes"].sum())
            yield len(batch), kept, hashes
        if n != len(rows):
            raise self._changed(f"{n} records, the scan read {len(rows)}")

    def _changed(self, what: str) -> DataError:
        return DataError(
            f"task {self.task}: the inputs changed since they were scanned ({what}). Run the whole job again "
            f"from the scan phase: {self.job.command('scan', range(self.job.tasks))}"
        )


# ---- phase 3: encode ---------------------------------------------------------------------------------


def _encode_fingerprint(job: ArrayJob, task: int, tok: LoadedTokenizer, keep_meta: dict[str, Any]) -> str:
    key = [job.cfg.fingerprint(tok.sha256), task, job.tasks, keep_meta["keep_sha256"]]
    return key_digest(key)


def encode(job: ArrayJob, task: int) -> dict[str, Any]:
    """Phase 3, task `task`: the task's kept documents tokenised into shards in W/encode/task_NNNNN/."""
    keep_meta = job.keep_record()
    tok = LoadedTokenizer.load(job.tokenizer_dir)
    fingerprint = _encode_fingerprint(job, task, tok, keep_meta)
    if done := _already_done(job.encode_meta(task), {"fingerprint": fingerprint}):
        return done
    (meta,) = job.scan_records([task])
    out = job.encode_dir(task)
    cli.prepare_output_dir(out, "--work")
    kept = _KeptRecords(job, task, meta)
    units = write_units(
        dataclasses.replace(job.cfg, output=out),
        tok,
        fingerprint,
        lambda executor: iter(kept),
        lambda: kept.input_bytes,
        clear_other=True,
    )
    done = {"fingerprint": fingerprint, "units": units}
    write_json_atomic(job.encode_meta(task), done)
    logger.info("encode task %d/%d: %d unit(s) in %s", task, job.tasks, len(units), out)
    return done


# ---- phase 4: merge ----------------------------------------------------------------------------------


def merge(job: ArrayJob, overwrite: bool = False) -> dict[str, Any]:
    """Phase 4: every task's shards, in task order, as one dataset in --output; returns its manifest."""
    cfg, out = job.cfg, job.cfg.output
    keep_meta = job.keep_record()
    tok = LoadedTokenizer.load(job.tokenizer_dir)
    done = [read_json(job.encode_meta(t)) for t in range(job.tasks)]
    missing = [t for t, d in enumerate(done) if d is None]
    other = [
        t
        for t, d in enumerate(done)
        if d is not None and d["fingerprint"] != _encode_fingerprint(job, t, tok, keep_meta)
    ]
    if missing or other:
        raise DataError(job.not_finished("encode", missing, other, job.encode_meta))
    fingerprint = cfg.fingerprint(tok.sha256)
    cli.prepare_output_dir(out)
    _check_replaceable(out, fingerprint, overwrite)
    clear_dataset(out, tokenizer=cfg.tokenizer is None)  # a --tokenizer given may be out/tokenizer
    if cfg.tokenizer is None:
        shutil.copytree(job.tokenizer_dir, out / "tokenizer.tmp")
        os.replace(out / "tokenizer.tmp", out / "tokenizer")
        tok = dataclasses.replace(tok, dir=out / "tokenizer")
    records = []
    shard_pairs = 0
    for task, task_done in enumerate(done):
        for unit in task_done["units"]:
            shards = {}
            for split, shard in unit["shards"].items():
                prefix = f"{split}_{shard_pairs:05d}"
                for ext in (".bin", ".idx"):
                    _link(job.encode_dir(task) / (shard["prefix"] + ext), out / (prefix + ext), job, task)
                shards[split] = shard | {"prefix": prefix}
            shard_pairs += bool(shards)
            records.append(unit | {"shards": shards})
    return write_manifest(cfg, records, keep_meta["report"], tok, fingerprint)


def _check_replaceable(out: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse to replace a dataset in `out` that another job wrote, unless `overwrite`."""
    if overwrite:
        return
    if (out / "units").exists():
        why = f"a codeparrot-preprocess job's shards ({out / 'units'})"
    elif (out / MANIFEST).exists() and load_manifest(out).get("config", {}).get("fingerprint") != fingerprint:
        why = f"a dataset written with other inputs, settings or tokenizer ({out / MANIFEST})"
    else:
        return
    raise DataError(f"{out}: holds {why}. Add --overwrite to replace it, or choose another --output.")


def _link(src: Path, dst: Path, job: ArrayJob, task: int) -> None:
    """`dst` becomes `src`'s content: a hard link, or a copy where the filesystem has none (or they are on
    two filesystems)."""
    if not src.exists():
        raise DataError(
            f"{src}: missing, but {job.encode_meta(task)} says it is finished. Delete that file and run the "
            f"task again: {job.command('encode', [task])}"
        )
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    replace_atomic(tmp, dst)


# ---- command line ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    shared = cli.tool_parser(None, None, add_help=False)
    add_arguments(shared)
    g = shared.add_argument_group("array job")
    g.add_argument(
        "--work", required=True, type=Path, help="directory every task shares (intermediate results)"
    )
    g.add_argument("--task", type=int, help="this task, 0..N-1 (scan, encode; default: $SLURM_ARRAY_TASK_ID)")
    g.add_argument(
        "--tasks", type=int, help="N (default: $SLURM_ARRAY_TASK_COUNT, or for keep and merge: as scanned)"
    )
    parser = OneLineParser(
        prog="codeparrot-preprocess-array",
        description=__doc__,
        example="bash launch/slurm/preprocess.sh --tasks 16 --work /shared/work --output /shared/data\n"
        "codeparrot-preprocess-array scan --input /data/code --output /data/shards --work /scratch/job "
        "--task 0 --tasks 8",
    )
    phases = parser.add_subparsers(dest="phase", required=True, metavar="PHASE")
    for name, help in PHASES.items():
        phases.add_parser(name, parents=[shared], help=help, description=help, allow_abbrev=False)
    return parser


def _shared_flags(argv: Sequence[str]) -> tuple[str, ...]:
    """The flags after the phase, without the ones that differ between phases and tasks."""
    own = ("--task", "--tasks", "--work")
    flags, skip = [], False
    for arg in argv[1:]:
        if not skip and arg not in own and not arg.startswith(tuple(f"{o}=" for o in own)):
            flags.append(arg)
        skip = arg in own
    return tuple(flags)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"${name} ({value!r}) is not a number") from None


def _task_count(args: argparse.Namespace) -> int:
    tasks = args.tasks if args.tasks is not None else _env_int("SLURM_ARRAY_TASK_COUNT")
    if tasks is None and args.phase in ("keep", "merge"):
        scanned = sorted((args.work / "scan").glob("task_*.json"))
        tasks = (read_json(scanned[0]) or {}).get("tasks") if scanned else None
    if tasks is None:
        raise DataError(
            f"--tasks: not given. Pass --tasks N (the number of array tasks), or run the {args.phase} phase "
            "as a SLURM array job (sbatch --array=0-<N-1>)."
        )
    if tasks < 1:
        raise DataError(f"--tasks ({tasks}) must be at least 1")
    return tasks


def _task_index(args: argparse.Namespace, tasks: int) -> int:
    task = args.task if args.task is not None else _env_int("SLURM_ARRAY_TASK_ID")
    if task is None:
        raise DataError(
            f"--task: not given for the {args.phase} phase. Pass --task I (0 to {tasks - 1}), or submit the "
            f"phase as a SLURM job array (sbatch --array=0-{tasks - 1})."
        )
    if not 0 <= task < tasks:
        raise DataError(
            f"task {task} is out of range for --tasks {tasks}: tasks are numbered 0 to {tasks - 1} "
            f"(sbatch --array=0-{tasks - 1})."
        )
    return task


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)

    def run() -> Any:
        tasks = _task_count(args)
        job = ArrayJob(config_from_args(args), args.work, tasks, _shared_flags(argv))
        if args.phase == "scan":
            return scan(job, _task_index(args, tasks))
        if args.phase == "keep":
            return keep(job)
        if args.phase == "encode":
            return encode(job, _task_index(args, tasks))
        return merge(job, overwrite=args.overwrite)

    return cli.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
