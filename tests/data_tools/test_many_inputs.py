"""A directory of many small .jsonl.gz/.jsonl.zst files is one corpus: every record arrives, in sorted path
order, and the job's peak memory does not grow with the number of files.

Measured on a 2-core AMD EPYC (peak RSS of the job's process, --workers 1). This test's corpus, 10,000
documents: 20 files 52-54 MiB, 2,000 files 52-54 MiB, both before and after the inputs were streamed; runs
of the same command differ by up to 1.2 MiB. The same job keeping every file's reader open (an injected
leak) reaches 116 MiB with 2,000 files, 60 MiB with 20, and fails the bound below (6 MiB for 1,980 more
files, 3 KiB per file). At 20,000 files (40,000 documents) the job held about 420 bytes per file before
the inputs were streamed (20 files 60 MiB, 20,000 files 68 MiB: the list of every input path and the
exact-dedup path table) and holds none after (60 MiB for both).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from data_tools.indexed_dataset import IndexedDataset
from data_tools.manifest import load_manifest
from data_tools.preprocess import main

from .conftest import code_doc

ROOT = Path(__file__).resolve().parents[2]
N_FILES, DOCS_PER_FILE, FEW_FILES = 2_000, 5, 20
RSS_BOUND = 6 * 2**20  # bytes: see the module docstring


def write_member(path: Path, texts: list[str]) -> None:
    """`texts` as JSON lines, compressed by the name's suffix (.gz or .zst)."""
    data = "".join(json.dumps({"content": t}) + "\n" for t in texts).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        gzip.compress(data) if path.suffix == ".gz" else zstandard.ZstdCompressor().compress(data)
    )


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    """The same 10,000 documents as 2,000 files (gz and zst alternating, 20 subdirectories each with a
    nested one, a README that is not read) and as 20 files, each the concatenation of 100 of the small
    ones taken in sorted path order (the order in which a directory is read)."""
    many, few = tmp_path_factory.mktemp("many"), tmp_path_factory.mktemp("few")
    (many / "README.md").write_text("Shards of the corpus, one JSON object per line.\n")
    paths = []
    for i in range(N_FILES):
        part = many / f"part_{i // 100:02d}"
        # Half of each part in a subdirectory "more", which sorts before the "shard_*" files beside it.
        folder = part / "more" if i % 100 >= 50 else part
        paths.append(folder / f"shard_{i:05d}.jsonl.{'gz' if i % 2 else 'zst'}")
    texts = {p: [code_doc(DOCS_PER_FILE * i + j) for j in range(DOCS_PER_FILE)] for i, p in enumerate(paths)}
    for path, docs in texts.items():
        write_member(path, docs)
    ordered = sorted(paths)
    per = N_FILES // FEW_FILES
    for k in range(FEW_FILES):
        docs = [t for path in ordered[k * per : (k + 1) * per] for t in texts[path]]
        write_member(few / f"big_{k:02d}.jsonl.{'gz' if k % 2 else 'zst'}", docs)
    return many, few


# Runs a command and prints its exit status and peak RSS (KiB on Linux). A process's peak RSS starts from
# that of the process it was forked from (Linux carries it over the fork and the exec), so the job is
# started from this small interpreter, not from pytest's larger one; wait4, not wait, gives the rusage of
# that one child (and the worker processes it waited for).
MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def preprocess_peak_rss(corpus: Path, out: Path, tokenizer: Path) -> int:
    """Run codeparrot-preprocess on `corpus` in a child process; its peak RSS in bytes."""
    cmd = [
        sys.executable,
        "-c",
        MEASURE,
        sys.executable,
        "-m",
        "data_tools.preprocess",
        "--input",
        str(corpus),
    ]
    cmd += ["--output", str(out), "--tokenizer", str(tokenizer), "--workers", "1", "--quiet"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    status, max_rss_kib = map(int, result.stdout.split())
    assert result.returncode == 0 and status == 0, result.stderr
    return max_rss_kib * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB and inherited as on Linux")
@pytest.mark.timeout(120)
def test_a_directory_of_2000_small_files_is_one_corpus_in_flat_memory(corpora, tmp_path, small_tokenizer):
    many, few = corpora
    rss_few = preprocess_peak_rss(few, tmp_path / "few", small_tokenizer)
    rss_many = preprocess_peak_rss(many, tmp_path / "many", small_tokenizer)

    m_few, m_many = load_manifest(tmp_path / "few"), load_manifest(tmp_path / "many")
    docs = N_FILES * DOCS_PER_FILE
    for m in (m_few, m_many):
        assert m["report"]["input_docs"] == docs and m["report"]["kept_docs"] == docs
        assert m["report"]["bad_input"]["counts"] == {}
        assert sum(s["documents"] for s in m["splits"].values()) == docs
    # The same records in the same order: the same shards, byte for byte.
    shards = [s["prefix"] for split in m_few["splits"].values() for s in split["shards"]]
    assert shards == [s["prefix"] for split in m_many["splits"].values() for s in split["shards"]]
    for name in (prefix + ext for prefix in shards for ext in (".bin", ".idx")):
        assert (tmp_path / "many" / name).read_bytes() == (tmp_path / "few" / name).read_bytes(), name
    assert len(IndexedDataset(tmp_path / "many" / shards[0])) > 0

    assert rss_many <= rss_few + RSS_BOUND, (
        f"peak RSS {rss_many / 2**20:.1f} MiB with {N_FILES} files, {rss_few / 2**20:.1f} MiB with "
        f"{FEW_FILES} files of the same documents: memory grows with the number of input files"
    )


def test_a_directory_of_both_data_and_source_files_needs_dir_format(tmp_path, small_tokenizer, capsys):
    corpus = tmp_path / "corpus"
    write_member(corpus / "shards" / "part_0.jsonl.zst", [code_doc(0), code_doc(1)])
    (corpus / "prepare.py").write_text(code_doc(2))
    args = ["--input", str(corpus), "--tokenizer", str(small_tokenizer), "--workers", "1", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {corpus}: holds both data files (1 JSONL/Parquet, e.g. shards/part_0")
    assert "Pass --dir-format data" in err and err.count("\n") == 1
    assert main([*args, "--output", str(tmp_path / "data"), "--dir-format", "data"]) == 0
    assert load_manifest(tmp_path / "data")["report"]["input_docs"] == 2
    assert main([*args, "--output", str(tmp_path / "source"), "--dir-format", "source"]) == 0
    assert load_manifest(tmp_path / "source")["report"]["input_docs"] == 1
