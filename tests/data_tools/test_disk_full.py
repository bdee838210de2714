"""A disk that fills up while preprocess writes shards: one error line naming the full path, the finished
shards kept, and a rerun once there is room completing the job byte-identically (a real tmpfs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def preprocess(corpus: Path, tokenizer: Path, output: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "data_tools.preprocess",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
    ]
    cmd += ["--output", str(output), "--shard-tokens", "20000", "--workers", "1", "--quiet"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_preprocess_on_a_full_disk_keeps_finished_shards_and_resumes(
    tmp_path, tmpfs, stdlib_sample, small_tokenizer
):
    small_disk = tmpfs("200k")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"content": d}) + "\n" for d in stdlib_sample))
    reference = tmp_path / "reference"
    assert preprocess(corpus, small_tokenizer, reference).returncode == 0
    total = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file())
    assert total > 300 * 1024  # does not fit on the 200 KiB disk

    out = small_disk / "data"
    result = preprocess(corpus, small_tokenizer, out)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and str(small_disk) in lines[0] and "No space left on device" in lines[0]
    assert "finished shard group(s) in" in lines[0] and "rerun resumes after them" in lines[0]
    assert "MiB free" in lines[0] and "Traceback" not in result.stderr
    finished = sorted(p.name for p in out.glob("*_0*.bin"))
    assert finished, "some shards were finished before the disk filled"

    # Room again: the same command resumes and ends with exactly the uninterrupted run's shards.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = preprocess(corpus, small_tokenizer, out)
    assert result.returncode == 0, result.stderr
    for shard in reference.glob("*_0*.*"):
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name
