"""Throughput of the preprocess job, in its two modes, against the fastest batch encoding `tokenizers` offers.

    python bench/preprocess.py                 # the standard library, and the same corpus repeated 4 times
    python bench/preprocess.py --copies 1 --vocab-size 512 --repeats 1      # seconds: a smoke test

For each corpus and mode, in the same run:
  limit  `Tokenizer.encode_batch_fast` on all cores over the documents the mode writes, already in memory
         (no reading, no cleaning, no writing), in calls of at most 8 MB of text (the Encoding objects hold
         about 100 bytes per token: one call over a whole corpus spends its time allocating): the ceiling
         for any job that tokenises them.
  ours   `data_tools.preprocess.preprocess()` from reading the corpus files to the finished shards and
         manifest, with a tokenizer already trained:
           whole job      reading, cleaning, dedup, tokenising, writing; the limit runs over the kept docs;
           tokenize-only  `--tokenize-only` (the work of Megatron-LM's tools/preprocess_data.py): reading,
                          tokenising, appending the end-of-document token, writing; the limit runs over every
                          good document.
Both sides count the same tokens (end-of-document tokens excluded), so tokens/s compare directly. The sides
alternate (limit, ours, ours, limit, ...); each side's figure is its best of --repeats runs, and ratio = ours
/ limit. CPU seconds (all threads and worker processes) are recorded beside the wall-clock figures: on a
busy machine they say more than the wall clock. The ratios per corpus are printed last; the raw figures go
to bench/results/preprocess_<date>_<cpu>.json (bench/common.py).

The repeated corpus is N JSONL files, each holding every standard-library file once with a one-line header
naming the copy, so exact dedup keeps all N copies (as different files of a real corpus).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    Printer,
    command_line,
    describe_machine,
    finish,
    machine_info,
    now,
)
from data_tools.indexed_dataset import IndexedDataset  # noqa: E402
from data_tools.parallel import CleanConfig, Cleaner, cleaned_batches, make_executor  # noqa: E402
from data_tools.preprocess import PreprocessConfig, preprocess  # noqa: E402
from data_tools.sources import (  # noqa: E402
    Problems,
    SourceConfig,
    default_workers,
    iter_batches,
    iter_documents,
    iter_records,
)
from data_tools.train_tokenizer import load_tokenizer, train  # noqa: E402


def kept_texts(sources: SourceConfig, clean: CleanConfig) -> list[str]:
    """The texts that the job keeps (same cleaning, in-process): the limit's input."""
    cleaner, problems = Cleaner(clean), Problems(log=False)
    batches = iter_batches(iter_records(sources, problems))
    cleaned = cleaned_batches(make_executor(1), batches, cleaner, sources, problems, window=1)
    return [doc.text for _, kept, _ in cleaned for doc in kept]


LIMIT_CALL_CHARS = 8_000_000


def limit_run(tokenizer: Any, texts: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, tokens) of encode_batch_fast on all cores over `texts`, in calls of at
    most LIMIT_CALL_CHARS characters."""
    calls, call, size = [], [], 0
    for t in texts:
        call.append(t)
        size += len(t)
        if size >= LIMIT_CALL_CHARS:
            calls.append(call)
            call, size = [], 0
    calls += [call] if call else []
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for call in calls:
        n += sum(len(e) for e in tokenizer.encode_batch_fast(call, add_special_tokens=False))
    return time.perf_counter() - t0, time.process_time() - c0, n


def ours_run(cfg: PreprocessConfig) -> tuple[float, float, int, dict[str, Any]]:
    """(wall seconds, CPU seconds of this process and its workers, tokens without end-of-document ones,
    manifest) of one preprocess() run, from scratch."""
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
    return wall, cpu, tokens, manifest


def measure(tok_dir: Path, texts: list[str], cfg: PreprocessConfig, repeats: int) -> dict[str, Any]:
    """Both sides of one corpus and mode, alternating; each side's best run."""
    tokenizer, _ = load_tokenizer(tok_dir)
    runs: dict[str, list[tuple[float, float, int]]] = {"limit": [], "ours": []}
    for k in range(repeats):
        for side in ("limit", "ours") if k % 2 == 0 else ("ours", "limit"):
            if side == "limit":
                runs[side].append(limit_run(tokenizer, texts))
            else:
                runs[side].append(ours_run(cfg)[:3])
    out: dict[str, Any] = {"documents": len(texts), "megabytes": sum(map(len, texts)) / 1e6}
    for side, rs in runs.items():
        wall, cpu, n = min(rs)
        out[side] = {"tokens": n, "tokens_per_s": n / wall, "best_wall_s": wall, "cpu_s_of_best": cpu}
        out[side]["runs"] = [{"wall_s": w, "cpu_s": c} for w, c, _ in rs]
    out["ratio"] = out["ours"]["tokens_per_s"] / out["limit"]["tokens_per_s"]
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
        "baseline": f"encode_batch_fast {lim['tokens_per_s'] / 1e6:.2f}M tok/s",
        "ours": f"{ours['tokens_per_s'] / 1e6:.2f}M tok/s",
        "ratio": round(f["ratio"], 3),
        "how": f"tok/s ours / tok/s limit, each the best of {args.repeats} alternating runs",
    }


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
    started, out = now(), Printer()
    machine = machine_info()
    out(describe_machine(machine))
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
        for name, sources in corpora.items():
            fig: dict[str, Any] = {}
            for mode in args.mode:
                texts = mode_texts(mode, sources)
                cfg = mode_config(mode, sources, tok_dir, tmp / "out", args.workers)
                f = measure(tok_dir, texts, cfg, args.repeats)
                lim, ours = f["limit"], f["ours"]
                out(
                    f"{name:>10} {mode:>13}: {f['documents']} docs, {f['megabytes']:.1f} MB, "
                    f"{lim['tokens']:,} tokens (ours wrote {ours['tokens']:,}) | limit encode_batch_fast "
                    f"{lim['tokens_per_s'] / 1e6:.3f}M tok/s ({lim['cpu_s_of_best']:.1f} CPU s) | ours "
                    f"{ours['tokens_per_s'] / 1e6:.3f}M tok/s ({ours['cpu_s_of_best']:.1f} CPU s, "
                    f"{args.workers} workers) | ratio {f['ratio']:.3f}"
                )
                table.append(table_row(args, name, mode, f))
                finals.append(f"{name} {mode} {f['ratio']:.3f}")
                if mode == "whole job":  # the keys of the earlier results files
                    fig |= {
                        "documents_kept": f["documents"],
                        "megabytes_kept": f["megabytes"],
                        "limit_tokens": lim["tokens"],
                        "ours_tokens": ours["tokens"],
                        "limit_tokens_per_s": lim["tokens_per_s"],
                        "ours_tokens_per_s": ours["tokens_per_s"],
                        "ratio": f["ratio"],
                        "repeats": args.repeats,
                        "whole_job": {k: v for k, v in f.items() if k != "ratio"},
                    }
                else:
                    fig["tokenize_only"] = {k: v for k, v in f.items() if k != "ratio"}
                    fig["tokenize_only_ratio"] = f["ratio"]
            figures["corpora"][name] = fig
    finish(
        out,
        benchmark="preprocess",
        command=command_line("bench/preprocess.py", argv),
        started=started,
        machine=machine,
        precision=None,
        figures=figures,
        table=table,
        final_line="ratio ours/limit: " + " | ".join(finals),
        results_dir=args.results_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
