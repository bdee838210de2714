"""Throughput of the preprocess job, in its two modes, against the fastest encoding of the same documents.

    python -m bench.preprocess                 # the standard library, and the same corpus repeated 4 times
    python -m bench.preprocess --copies 1 --vocab-size 512 --repeats 1      # seconds: a smoke test

For each corpus and mode, in the same run:
  limit    the `tokenizers` library encoding the documents the mode tokenises, already in memory (no
           reading, no cleaning, no writing), on all cores: the best of a sweep over how (its own thread
           pool through `encode_batch_fast`, or one forked single-threaded process per core) and how much
           text per call (LIMIT_CALL_CHARS), each pool started and warmed before the clock. The targets are
           ratios to this limit: what any job built on `tokenizers` could reach at most.
  ceiling  the same sweep with the encoder the job actually ran, when that is tiktoken (threads or
           processes; data_tools.fast_encode): the ceiling for ours. Ours above its ceiling means the
           ceiling is no ceiling, and the report says so ("ceiling exceeded"); with `tokenizers` the limit is
           the ceiling.
  ours     `data_tools.preprocess.preprocess()` from reading the corpus files to the finished shards and
           manifest, with a tokenizer already trained, its encoder chosen as a user's run chooses it
           (--encoder auto):
             whole job      reading, cleaning, dedup, tokenising, writing; the limit runs over the documents
                            the cleaning keeps, which ours tokenises (the chars/token filter then drops a
                            few of them: their tokens are counted for ours, which did encode them);
             tokenize-only  `--tokenize-only` (the work of Megatron-LM's tools/preprocess_data.py): reading,
                            tokenising, appending the end-of-document token, writing; the limit runs over
                            every good document.
Every side counts the same tokens (end-of-document tokens excluded): the benchmark checks that ours'
written tokens plus the filtered documents' equal the limit's, and fails otherwise. The sweep picks each
baseline's configuration once per mode on the first corpus; then the sides alternate (limit, ceiling, ours,
then the reverse, ...) and each side's figure is its best of --repeats runs; ratio = ours / limit. CPU
seconds (all threads and worker processes) are recorded beside the wall-clock figures: on a busy machine
they say more than the wall clock. The ratios per corpus are printed last; the raw figures go to
bench/results/preprocess_<date>_<cpu>.json (bench/common.py).

The repeated corpus is N JSONL files, each holding every standard-library file once with a one-line header
naming the copy, so exact dedup keeps all N copies (as different files of a real corpus).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    Run,
)
from bench.targets import PREPROCESS_TARGETS, target_line
from data_tools.encode import encode_texts
from data_tools.fast_encode import TiktokenEncoder, tiktoken_encoder
from data_tools.indexed_dataset import IndexedDataset
from data_tools.parallel import CleanConfig, Cleaner, cleaned_batches, make_executor, temporary_env
from data_tools.preprocess import PreprocessConfig, preprocess
from data_tools.sources import (
    Problems,
    SourceConfig,
    default_workers,
    iter_batches,
    iter_documents,
    iter_records,
)
from data_tools.train_tokenizer import load_tokenizer, train


def kept_texts(sources: SourceConfig, clean: CleanConfig) -> list[str]:
    """The texts that the job keeps (same cleaning, in-process): the limit's input."""
    cleaner, problems = Cleaner(clean), Problems(log=False)
    batches = iter_batches(iter_records(sources, problems))
    cleaned = cleaned_batches(make_executor(1), batches, cleaner, sources, problems, window=1)
    return [doc.text for _, kept, _ in cleaned for doc in kept]


LIMIT_CALL_CHARS = (1_000_000, 8_000_000)  # text per encoder call (or per task of a process pool)
LIMIT_HOWS = ("threads", "processes")
_POOL_TEXTS: dict[str, Any] = {}  # set in each forked limit worker by its initializer


def _limit_worker_init(encoder: Any, texts: list[str]) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _POOL_TEXTS["encoder"], _POOL_TEXTS["texts"] = encoder, texts


def _limit_task(lo: int, hi: int) -> tuple[np.ndarray, float]:
    """Token counts of texts[lo:hi] in a limit worker, and the worker's CPU seconds for them."""
    c0 = time.process_time()
    ids = encode_texts(_POOL_TEXTS["encoder"], _POOL_TEXTS["texts"][lo:hi])
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=hi - lo), time.process_time() - c0


def call_ranges(texts: list[str], call_chars: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of consecutive texts of at most about `call_chars` characters each."""
    ranges, lo, size = [], 0, 0
    for i, t in enumerate(texts):
        size += len(t)
        if size >= call_chars:
            ranges.append((lo, i + 1))
            lo, size = i + 1, 0
    return ranges + ([(lo, len(texts))] if lo < len(texts) else [])


class Limit:
    """One library's encoding of `texts` on all cores, timed per configuration (how, call_chars): its own
    threads (tokenizers' thread pool; tiktoken's encoder on a thread per core, which releases the GIL) or a
    forked process per core, started and warmed before any timing."""

    def __init__(self, library: str, encoder: Any, texts: list[str], cores: int) -> None:
        self.library, self.encoder, self.texts, self.cores = library, encoder, texts, cores
        ctx = multiprocessing.get_context("fork")
        with temporary_env("TOKENIZERS_PARALLELISM", "false"):
            self.pool = ctx.Pool(cores, _limit_worker_init, (encoder, texts))
        self.pool.starmap(_limit_task, [(0, 0)] * cores)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def run(self, how: str, call_chars: int) -> tuple[float, float, np.ndarray]:
        """(wall seconds, CPU seconds of every thread and process, tokens per text)."""
        ranges = call_ranges(self.texts, call_chars)
        c0, t0 = time.process_time(), time.perf_counter()
        worker_cpu = 0.0
        if how == "processes":
            results = self.pool.starmap(_limit_task, ranges, chunksize=1)
            worker_cpu = sum(cpu for _, cpu in results)
            counts = [c for c, _ in results]
        elif self.library == "tokenizers":
            with temporary_env("TOKENIZERS_PARALLELISM", "true"):
                counts = [
                    np.fromiter(
                        (
                            len(e)
                            for e in self.encoder.encode_batch_fast(
                                self.texts[lo:hi], add_special_tokens=False
                            )
                        ),
                        dtype=np.int64,
                        count=hi - lo,
                    )
                    for lo, hi in ranges
                ]
        else:
            with ThreadPoolExecutor(self.cores) as pool:
                counts = list(pool.map(lambda r: self._counts(*r), ranges))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0 + worker_cpu
        return wall, cpu, np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)

    def _counts(self, lo: int, hi: int) -> np.ndarray:
        ids = encode_texts(self.encoder, self.texts[lo:hi])
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=hi - lo)

    def sweep(self) -> list[dict[str, Any]]:
        """Every configuration once: wall seconds and tokens/s of each."""
        out = []
        for how in LIMIT_HOWS:
            for call_chars in LIMIT_CALL_CHARS:
                wall, cpu, counts = self.run(how, call_chars)
                n = int(counts.sum())
                out.append(
                    {
                        "how": how,
                        "call_chars": call_chars,
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "tokens": n,
                        "tokens_per_s": n / wall,
                    }
                )
        return out


def ours_run(cfg: PreprocessConfig) -> tuple[float, float, int, dict[str, Any]]:
    """(wall seconds, CPU seconds of this process and its workers, tokens written without end-of-document
    ones, the job's report.json) of one preprocess() run, from scratch."""
    r0 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.perf_counter()
    manifest = preprocess(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    r1 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(r0, r1, strict=True))
    docs = sum(s["documents"] for s in manifest["splits"].values())
    tokens = sum(s["tokens"] for s in manifest["splits"].values()) - docs  # end-of-document tokens excluded
    # Sanity: the shards hold what the manifest says.
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert int(IndexedDataset(cfg.output / shard["prefix"]).sizes.sum()) == shard["tokens"]
    return wall, cpu, tokens, json.loads((cfg.output / "report.json").read_text())


def filtered_tokens(texts: list[str], counts: np.ndarray, cfg: PreprocessConfig) -> int:
    """Tokens of the documents the whole job tokenises and then drops by its chars/token filter."""
    min_cpt = cfg.clean.filters.chars_per_token
    if cfg.tokenize_only or min_cpt is None:
        return 0
    return int(sum(int(n) for t, n in zip(texts, counts, strict=True) if len(t) / max(int(n), 1) < min_cpt))


def best_config(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    return max(sweep, key=lambda c: c["tokens_per_s"])


def measure(
    tok_dir: Path, texts: list[str], cfg: PreprocessConfig, repeats: int, chosen: dict[str, Any] | None
) -> dict[str, Any]:
    """Every side of one corpus and mode, alternating; each side's best run. `chosen`: the baselines'
    configurations picked on an earlier corpus (None: sweep them here)."""
    tokenizer, _ = load_tokenizer(tok_dir)
    cores = default_workers()
    ours_first = ours_run(cfg)  # which encoder the job chooses, and a warm file cache for the rest
    encoder = ours_first[3].get("encoders", ["tokenizers"])[-1]
    libraries = {"limit": ("tokenizers", tokenizer)}
    if encoder == "tiktoken":
        fast = tiktoken_encoder(tokenizer)
        assert isinstance(fast, TiktokenEncoder), fast  # the job ran it, so it converts
        libraries["ceiling"] = ("tiktoken", fast)
    baselines = {side: Limit(lib, enc, texts, cores) for side, (lib, enc) in libraries.items()}
    try:
        sweeps = {side: b.sweep() for side, b in baselines.items()} if chosen is None else {}
        configs = chosen or {side: best_config(sw) for side, sw in sweeps.items()}
        runs: dict[str, list[tuple[float, float, int]]] = {side: [] for side in (*baselines, "ours")}
        counts = None
        for k in range(repeats):
            order = [*baselines, "ours"]
            for side in order if k % 2 == 0 else order[::-1]:
                if side == "ours":
                    runs[side].append(ours_run(cfg)[:3])
                    continue
                wall, cpu, counts = baselines[side].run(configs[side]["how"], configs[side]["call_chars"])
                runs[side].append((wall, cpu, int(counts.sum())))
    finally:
        for b in baselines.values():
            b.close()
    # The same tokens: ours wrote the limit's tokens less those of the documents its filter dropped.
    dropped = filtered_tokens(texts, counts, cfg)
    limit_tokens = runs["limit"][0][2]
    for _, _, n in runs["ours"]:
        if n + dropped != limit_tokens:
            raise RuntimeError(
                f"ours wrote {n:,} tokens and dropped {dropped:,} by chars/token, but the limit encoded "
                f"{limit_tokens:,}: the sides did not tokenise the same documents"
            )
    runs["ours"] = [(wall, cpu, n + dropped) for wall, cpu, n in runs["ours"]]
    out: dict[str, Any] = {
        "documents": len(texts),
        "megabytes": sum(map(len, texts)) / 1e6,
        "encoder": encoder,
        "tokens_dropped_by_chars_per_token": dropped,
        "configs": configs,
        "sweeps": sweeps,
    }
    for side, rs in runs.items():
        wall, cpu, n = min(rs)
        out[side] = {"tokens": n, "tokens_per_s": n / wall, "best_wall_s": wall, "cpu_s_of_best": cpu}
        out[side]["runs"] = [{"wall_s": w, "cpu_s": c} for w, c, _ in rs]
        if side in libraries:
            out[side]["library"] = libraries[side][0]
    out["ratio"] = out["ours"]["tokens_per_s"] / out["limit"]["tokens_per_s"]
    ceiling = out.get("ceiling", out["limit"])
    out["ceiling_ratio"] = out["ours"]["tokens_per_s"] / ceiling["tokens_per_s"]
    # CPU seconds the limit needs per CPU second of ours (the same tokens): the work overhead alone.
    out["cpu_limit_over_ours"] = out["limit"]["cpu_s_of_best"] / out["ours"]["cpu_s_of_best"]
    return out


def repeated_corpus(root: Path, copies: int) -> tuple[str, ...]:
    docs = list(iter_documents(SourceConfig(), Problems()))
    paths = []
    for k in range(copies):
        path = root / f"stdlib_copy{k}.jsonl"
        with open(path, "w") as f:
            for d in docs:
                f.write(json.dumps({"content": f"# copy {k}: {Path(d.path).name}\n{d.text}"}) + "\n")
        paths.append(str(path))
    return tuple(paths)


MODES = ("whole job", "tokenize-only")


def mode_key(mode: str) -> str:
    """A mode's key in the figures: whole_job, tokenize_only."""
    return mode.replace(" ", "_").replace("-", "_")


def mode_config(mode: str, sources: SourceConfig, tok_dir: Path, out: Path, workers: int) -> PreprocessConfig:
    common = dict(sources=sources, output=out, tokenizer=tok_dir, workers=workers, show_progress=False)
    if mode == "tokenize-only":
        return PreprocessConfig(clean=CleanConfig.tokenize_only(), tokenize_only=True, **common)
    return PreprocessConfig(clean=CleanConfig(), **common)


def mode_texts(mode: str, sources: SourceConfig) -> list[str]:
    """The documents a mode writes: the kept ones (whole job), every good one (tokenize-only)."""
    if mode == "tokenize-only":
        return [d.text for d in iter_documents(sources, Problems(log=False))]
    return kept_texts(sources, CleanConfig())


def table_row(args: argparse.Namespace, corpus: str, mode: str, f: dict[str, Any]) -> dict[str, Any]:
    lim, ours = f["limit"], f["ours"]
    return {
        "benchmark": "bench/preprocess.py",
        "setting": f"{mode}: {corpus} ({lim['tokens'] / 1e6:.1f}M tokens), {args.workers} workers, "
        f"{args.vocab_size}-id tokenizer",
        "precision": "n/a",
        "native": "n/a",
        "baseline": f"tokenizers limit ({config_text(f['configs']['limit'])}) "
        f"{lim['tokens_per_s'] / 1e6:.2f}M tok/s",
        "ours": f"{ours['tokens_per_s'] / 1e6:.2f}M tok/s ({f['encoder']})",
        "ratio": round(f["ratio"], 3),
        "how": f"tok/s ours / tok/s limit, each the best of {args.repeats} alternating runs",
    }


def config_text(c: dict[str, Any]) -> str:
    return f"{c['how']}, {c['call_chars'] / 1e6:g} MB per call"


def result_line(name: str, mode: str, f: dict[str, Any], workers: int) -> str:
    lim, ours = f["limit"], f["ours"]
    ceiling = ""
    if "ceiling" in f:
        c = f["ceiling"]
        ceiling = (
            f" | ceiling {c['library']} ({config_text(f['configs']['ceiling'])}) "
            f"{c['tokens_per_s'] / 1e6:.3f}M tok/s"
        )
    flag = " CEILING EXCEEDED" if f["ceiling_ratio"] > 1 else ""
    return (
        f"{name:>10} {mode:>13}: {f['documents']} docs, {f['megabytes']:.1f} MB, {lim['tokens']:,} tokens | "
        f"limit tokenizers ({config_text(f['configs']['limit'])}) {lim['tokens_per_s'] / 1e6:.3f}M tok/s "
        f"({lim['cpu_s_of_best']:.1f} CPU s){ceiling} | ours ({f['encoder']}, {workers} workers) "
        f"{ours['tokens_per_s'] / 1e6:.3f}M tok/s ({ours['cpu_s_of_best']:.1f} CPU s) | ratio to the limit "
        f"{f['ratio']:.3f}, to the ceiling {f['ceiling_ratio']:.3f}{flag}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=4, help="size of the repeated corpus, in copies")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per side; each side's figure is its best"
    )
    parser.add_argument(
        "--mode", nargs="+", choices=MODES, default=list(MODES), help="which modes to measure"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    harness = Run("bench.preprocess", argv)
    out = harness.out
    figures: dict[str, Any] = {"args": {**vars(args), "results_dir": str(args.results_dir)}, "corpora": {}}
    table, finals = [], []
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        tok_dir = tmp / "tokenizer"
        out(f"training a {args.vocab_size}-id tokenizer on the standard library ...")
        train(kept_texts(SourceConfig(), CleanConfig()), tok_dir, args.vocab_size, show_progress=False)
        corpora = {
            "stdlib": SourceConfig(),
            f"stdlib x{args.copies}": SourceConfig(inputs=repeated_corpus(tmp, args.copies)),
        }
        chosen: dict[
            str, dict[str, Any]
        ] = {}  # per mode: the baselines' configurations, from the first corpus
        for name, sources in corpora.items():
            fig: dict[str, Any] = {"repeats": args.repeats}
            for mode in args.mode:
                texts = mode_texts(mode, sources)
                cfg = mode_config(mode, sources, tok_dir, tmp / "out", args.workers)
                f = measure(tok_dir, texts, cfg, args.repeats, chosen.get(mode))
                chosen.setdefault(mode, f["configs"])
                for side, sweep in f["sweeps"].items():
                    out(
                        f"{name:>10} {mode:>13}: {side} sweep: "
                        + ", ".join(f"{config_text(c)} {c['tokens_per_s'] / 1e6:.3f}M tok/s" for c in sweep)
                    )
                out(result_line(name, mode, f, args.workers))
                table.append(table_row(args, name, mode, f))
                finals.append(f"{name} {mode} {f['ratio']:.3f}")
                fig[mode_key(mode)] = f
            figures["corpora"][name] = fig
    out(target_line([PREPROCESS_TARGETS[mode_key(mode)] for mode in args.mode]))
    harness.finish(
        precision=None,
        figures=figures,
        table=table,
        final_line="ratio ours/tokenizers limit: " + " | ".join(finals),
        results_dir=args.results_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
