"""Throughput of the whole preprocess job against the fastest batch encoding `tokenizers` offers.

    python bench/preprocess.py                 # the standard library, and the same corpus repeated 4 times

For each corpus, in the same run:
  limit  `Tokenizer.encode_batch_fast` on all cores over the documents the job keeps, already in memory
         (no reading, no cleaning, no writing): the ceiling for any job that tokenises them.
  ours   `data_tools.preprocess.preprocess()` from reading the corpus files to the finished shards and
         manifest (reading, cleaning, dedup, tokenising, writing), with a tokenizer already trained.
Both count the same tokens (the kept documents' tokens, end-of-document tokens excluded), so tokens/s
compare directly; each side's figure is its best of 3 runs, and ratio = ours / limit. The ratio per corpus
is printed last; the raw figures go to bench/results/preprocess_<date>_<cpu>.json (bench/common.py).

The repeated corpus is 4 JSONL files, each holding every standard-library file once with a one-line
header naming the copy, so exact dedup keeps all four copies (as different files of a real corpus).
"""

from __future__ import annotations

import argparse
import json
import logging
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


def limit_tokens_per_s(tok_dir: Path, texts: list[str], repeats: int = 3) -> tuple[float, int]:
    tokenizer, _ = load_tokenizer(tok_dir)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
    n = sum(len(e.ids) for e in encodings)
    return n / best, n


def ours_tokens_per_s(
    sources: SourceConfig, clean: CleanConfig, tok_dir: Path, out: Path, workers: int, repeats: int = 3
) -> tuple[float, int]:
    best, manifest = float("inf"), None
    for _ in range(repeats):
        cfg = PreprocessConfig(
            sources=sources, clean=clean, output=out, tokenizer=tok_dir, workers=workers, show_progress=False
        )
        t0 = time.perf_counter()
        manifest = preprocess(cfg, overwrite=True)
        best = min(best, time.perf_counter() - t0)
    docs = sum(s["documents"] for s in manifest["splits"].values())
    tokens = sum(s["tokens"] for s in manifest["splits"].values()) - docs  # end-of-document tokens excluded
    # Sanity: the shards hold what the manifest says.
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert int(IndexedDataset(out / shard["prefix"]).sizes.sum()) == shard["tokens"]
    return tokens / best, tokens


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


REPEATS = 3  # runs per side; each side's figure is its best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=4, help="size of the repeated corpus, in copies")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started, out = now(), Printer()
    machine = machine_info()
    out(describe_machine(machine))
    clean = CleanConfig()
    figures: dict[str, Any] = {"args": {**vars(args), "results_dir": str(args.results_dir)}, "corpora": {}}
    table = []
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        tok_dir = tmp / "tokenizer"
        out(f"training a {args.vocab_size}-id tokenizer on the standard library ...")
        train(kept_texts(SourceConfig(), clean), tok_dir, args.vocab_size, show_progress=False)
        corpora = {
            "stdlib": SourceConfig(),
            f"stdlib x{args.copies}": SourceConfig(inputs=repeated_corpus(tmp, args.copies)),
        }
        ratios = []
        for name, sources in corpora.items():
            texts = kept_texts(sources, clean)
            limit, n_limit = limit_tokens_per_s(tok_dir, texts, REPEATS)
            ours, n_ours = ours_tokens_per_s(sources, clean, tok_dir, tmp / "out", args.workers, REPEATS)
            mb = sum(map(len, texts)) / 1e6
            out(
                f"{name:>12}: kept {len(texts)} docs, {mb:.1f} MB, {n_limit:,} tokens (ours wrote {n_ours:,})"
            )
            out(
                f"{name:>12}: limit encode_batch_fast {limit / 1e6:.3f}M tok/s | ours preprocess "
                f"{ours / 1e6:.3f}M tok/s ({args.workers} workers)"
            )
            ratios.append(ours / limit)
            figures["corpora"][name] = {
                "documents_kept": len(texts),
                "megabytes_kept": mb,
                "limit_tokens": n_limit,
                "ours_tokens": n_ours,
                "limit_tokens_per_s": limit,
                "ours_tokens_per_s": ours,
                "ratio": ours / limit,
                "repeats": REPEATS,
            }
            table.append(
                {
                    "benchmark": "bench/preprocess.py",
                    "setting": f"{name} ({n_limit / 1e6:.1f}M tokens kept), {args.workers} workers, "
                    f"{args.vocab_size}-id tokenizer",
                    "precision": "n/a",
                    "native": "n/a",
                    "baseline": f"encode_batch_fast {limit / 1e6:.2f}M tok/s",
                    "ours": f"{ours / 1e6:.2f}M tok/s",
                    "ratio": round(ours / limit, 3),
                    "how": f"tok/s ours / tok/s limit, each the best of {REPEATS} runs",
                }
            )
    finish(
        out,
        benchmark="preprocess",
        command=command_line("bench/preprocess.py", argv),
        started=started,
        machine=machine,
        precision=None,
        figures=figures,
        table=table,
        final_line="ratio ours/limit: "
        + " | ".join(f"{n} {r:.3f}" for n, r in zip(corpora, ratios, strict=True)),
        results_dir=args.results_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
