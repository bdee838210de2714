"""Clean and deduplicate a corpus into JSONL (optionally .gz/.zst), with a JSON report.

    codeparrot-clean --output clean.jsonl.zst                  # the standard library
    codeparrot-clean --input raw/*.jsonl.gz --near-dedup --output clean.jsonl.gz --report report.json

Each output line is {"content": text, "source": "file:line"}. The report counts documents and bytes kept
and removed per filter, the documents removed per HumanEval problem they contain (decontamination, on
unless --no-decontaminate), duplicate clusters, and every skipped bad record with its file and line.
(`codeparrot-preprocess` runs the same cleaning itself; this tool is for inspecting or sharing the result.)
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_tools import cli
from data_tools.atomic import replace_atomic
from data_tools.errors import DataError
from data_tools.parallel import CleanConfig, Cleaner, cleaned_batches, make_executor
from data_tools.sources import Problems, SourceConfig, iter_batches, iter_records

logger = logging.getLogger(__name__)


def _open_output(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    if path.suffix == ".zst":
        import zstandard

        return io.TextIOWrapper(
            zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb")), encoding="utf-8"
        )
    return open(path, "w", encoding="utf-8")


def clean(
    sources: SourceConfig,
    cfg: CleanConfig,
    output: Path,
    report_path: Path | None = None,
    workers: int = 1,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write the kept documents to `output` (atomically) and return the report (also written as JSON)."""
    from tqdm import tqdm

    report_path = report_path or output.with_name(output.name.split(".")[0] + ".report.json")
    cli.refuse_writing_inputs(sources.inputs, output)
    cli.refuse_writing_inputs(sources.inputs, report_path, "--report")
    cli.prepare_output_file(output)
    cli.prepare_output_file(report_path, "--report")
    problems, cleaner = Problems(), Cleaner(cfg)
    tmp = output.with_name(output.name + ".tmp" + "".join(output.suffixes[-1:]))
    executor = make_executor(workers)
    try:
        with _open_output(tmp) as f, tqdm(desc="clean", unit=" docs", disable=not show_progress) as bar:
            batches = iter_batches(iter_records(sources, problems), 64, 1_000_000)
            for n_in, kept, _ in cleaned_batches(
                executor, batches, cleaner, sources, problems, 2 * max(workers, 1)
            ):
                for doc in kept:
                    f.write(
                        json.dumps({"content": doc.text, "source": doc.location}, ensure_ascii=False) + "\n"
                    )
                bar.update(n_in)
    finally:
        executor.shutdown()
    replace_atomic(tmp, output)
    report = cleaner.to_dict(problems)
    report["sources"] = sources.describe()
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if problems.counts:
        logger.warning("%s; details in %s", problems.summary(), report_path)
    if report["kept_docs"] == 0:
        raise DataError(f"no documents left after cleaning {report['input_docs']} read; see {report_path}.")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.tool_parser(
        "codeparrot-clean",
        __doc__,
        example="codeparrot-clean --input corpus.jsonl.gz --output clean.jsonl.zst",
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="cleaned JSONL (.jsonl, .jsonl.gz, .jsonl.zst)"
    )
    parser.add_argument("--report", type=Path, help="report JSON (default: beside the output)")
    cli.add_common_args(parser)
    args = parser.parse_args(argv)
    return cli.run(
        lambda: clean(
            cli.source_config(args),
            cli.clean_config(args),
            args.output,
            args.report,
            args.workers,
            not args.quiet,
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
