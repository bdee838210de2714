"""The array job (data_tools.array_job) gives the single-process job's dataset; its errors name the
unfinished tasks and the commands that run them; finished tasks rerun as no-ops. The SLURM driver
(launch/slurm/preprocess.sh) runs on a real SLURM cluster in tests/cluster/test_slurm_preprocess.py."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from data_tools import array_job, preprocess
from data_tools.indexed_dataset import IndexedDataset
from data_tools.manifest import load_manifest, verify_dataset
from data_tools.train_tokenizer import tokenizer_sha256

from .conftest import code_doc, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "launch" / "slurm"
TASKS = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """codeparrot-preprocess flags over five JSONL files, with duplicates that cross task boundaries (exact:
    other indentation; near: one renamed variable), a file the filters remove, a line that is not JSON, and
    a document removed for chars/token after tokenising."""
    d = tmp_path_factory.mktemp("corpus")
    long_doc = code_doc(5) + "".join(f"value_{i} = compute_{i}(data_{i})\n" for i in range(200))
    odd = "def f():\n    return 0\n" + "".join(f"ǆ{chr(0x4E00 + i)}ʬ{i % 10}\n" for i in range(300))
    extra = {
        0: [{"content": long_doc}],
        3: [
            {"content": code_doc(2).replace("    ", "\t")},
            {"content": "# auto-generated\n" + code_doc(500)},
            "not json",
            {"content": odd},
        ],
        4: [{"content": code_doc(45)}, {"content": long_doc.replace("value_3 =", "value_three =")}],
    }
    files = [
        write_jsonl(
            d / f"part{f}.jsonl", [{"content": code_doc(40 * f + i)} for i in range(40)] + extra.get(f, [])
        )
        for f in range(5)
    ]
    return [
        "--input",
        *map(str, files),
        "--vocab-size",
        "300",
        "--valid-ratio",
        "0.2",
        "--shard-tokens",
        "4000",
        "--near-dedup",
        "--disable-filter",
        "alphanumeric_fraction",
        "--workers",
        "1",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The single-process job's dataset."""
    out = tmp_path_factory.mktemp("reference") / "data"
    assert preprocess.main([*corpus, "--output", str(out)]) == 0
    return out


def streams(data: Path) -> dict[str, tuple[bytes, bytes]]:
    """Per split: every token, and every document's length, in manifest order."""
    out = {}
    for split, info in load_manifest(data)["splits"].items():
        sets = [IndexedDataset(data / s["prefix"]) for s in info["shards"]]
        tokens = np.concatenate([np.asarray(ds.tokens) for ds in sets] or [np.empty(0)])
        sizes = np.concatenate([ds.sizes for ds in sets] or [np.empty(0)])
        out[split] = (tokens.tobytes(), sizes.astype(np.int64).tobytes())
    return out


def assert_same_dataset(out: Path, ref: Path) -> None:
    verify_dataset(out, progress=False)
    a, b = load_manifest(out), load_manifest(ref)
    assert streams(out) == streams(ref)
    assert (
        tokenizer_sha256(out / "tokenizer") == tokenizer_sha256(ref / "tokenizer") == a["tokenizer"]["sha256"]
    )
    assert a["report"] == b["report"]
    for key in ("tokenizer", "dtype", "sources", "config", "format", "tool"):
        assert a[key] == b[key], key
    for split in ("train", "valid"):
        assert a["splits"][split]["documents"] == b["splits"][split]["documents"] > 0
        assert a["splits"][split]["tokens"] == b["splits"][split]["tokens"]


def run(phase: str, flags: list[str], work: Path, out: Path, *extra: str) -> int:
    return array_job.main([phase, *flags, "--work", str(work), "--output", str(out), *extra])


def test_unfinished_tasks_are_named_and_finished_ones_rerun_as_no_ops(
    tmp_path, corpus, reference, capsys, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    work, out = tmp_path / "work", tmp_path / "data"
    n = ("--tasks", str(TASKS))
    for task in (0, 2):
        assert run("scan", corpus, work, out, "--task", str(task), *n) == 0
    assert run("keep", corpus, work, out, *n) == 2
    err = capsys.readouterr().err
    assert "scan phase: task(s) 1 of 3 have not finished" in err and "task_00001.json" in err
    assert "codeparrot-preprocess-array scan --task 1 --tasks 3 --work" in err and "--vocab-size 300" in err
    assert "sbatch --array=1 launch/slurm/preprocess.sbatch scan --tasks 3" in err

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # the task and the count from SLURM's variables
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert run("scan", corpus, work, out) == 0
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    assert run("keep", corpus, work, out) == 0  # the count as scanned
    for task in (0, 2):
        assert run("encode", corpus, work, out, "--task", str(task), *n) == 0
    capsys.readouterr()
    assert run("merge", corpus, work, out, *n) == 2
    err = capsys.readouterr().err
    assert "encode phase: task(s) 1 of 3 have not finished" in err
    assert "codeparrot-preprocess-array encode --task 1 --tasks 3" in err
    assert not (out / "manifest.json").exists()

    assert run("encode", corpus, work, out, "--task", "1", *n) == 0
    shards = sorted((work / "encode").rglob("*.bin"))
    records = [work / "scan" / "task_00001.json", work / "keep.json", work / "tokenizer" / "tokenizer.json"]
    before = {p: p.stat().st_mtime_ns for p in [*shards, *records]}
    assert run("merge", corpus, work, out, *n) == 0
    first = load_manifest(out)
    # Finished tasks run again do nothing; merge again writes the same dataset.
    assert run("scan", corpus, work, out, "--task", "1", *n) == 0
    assert run("keep", corpus, work, out, *n) == 0
    assert run("encode", corpus, work, out, "--task", "1", *n) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sum("already done" in r.getMessage() for r in caplog.records) == 3
    assert run("merge", corpus, work, out, *n) == 0
    assert {k: v for k, v in load_manifest(out).items() if k != "created"} == {
        k: v for k, v in first.items() if k != "created"
    }
    assert_same_dataset(out, reference)


def test_a_phase_run_with_other_flags_is_refused(tmp_path, corpus, capsys):
    work, out = tmp_path / "work", tmp_path / "data"
    for task in range(TASKS):
        assert run("scan", corpus, work, out, "--task", str(task), "--tasks", "3") == 0
    other = [*corpus, "--valid-ratio", "0.3"]
    assert run("keep", other, work, out, "--tasks", "3") == 2
    err = capsys.readouterr().err
    assert "task(s) 0, 1, 2 are out of date" in err and "--valid-ratio 0.3" in err
    # Another dataset in --output is not replaced without --overwrite.
    assert run("keep", corpus, work, out, "--tasks", "3") == 0
    for task in range(TASKS):
        assert run("encode", corpus, work, out, "--task", str(task), "--tasks", "3") == 0
    (out / "units").mkdir(parents=True)
    assert run("merge", corpus, work, out, "--tasks", "3") == 2
    assert "holds a codeparrot-preprocess job's shards" in capsys.readouterr().err
    assert run("merge", corpus, work, out, "--tasks", "3", "--overwrite") == 0
    assert not (out / "units").exists()


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--tasks", "3"], {}, "--task: not given for the scan phase. Pass --task I (0 to 2)"),
        (
            ["--tasks", "3", "--task", "3"],
            {},
            "task 3 is out of range for --tasks 3: tasks are numbered 0 to 2",
        ),
        ([], {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4x"}, "$SLURM_ARRAY_TASK_COUNT ('4x')"),
        ([], {}, "--tasks: not given"),
    ],
)
def test_task_arguments_are_checked(tmp_path, corpus, capsys, monkeypatch, extra, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run("scan", corpus, tmp_path / "work", tmp_path / "data", *extra) == 2
    assert message in capsys.readouterr().err


def test_inputs_split_into_contiguous_ranges_balanced_by_size(tmp_path):
    sizes = [100, 5000, 100, 100, 4000, 0, 900]
    inputs = []
    for i, size in enumerate(sizes):
        (tmp_path / f"{i}.jsonl").write_bytes(b"x" * size)
        inputs.append(("jsonl", tmp_path / f"{i}.jsonl"))
    ranges = array_job.split_inputs(inputs, 3)
    assert ranges == [(0, 2), (2, 4), (4, 7)]  # 5,102 / 202 / 4,903 bytes (+1 each): a file is never split
    assert array_job.split_inputs(inputs[:2], 4) == [(0, 1), (1, 1), (1, 2), (2, 2)]
    assert array_job.split_inputs([], 2) == [(0, 0), (0, 0)]


def test_slurm_scripts_parse_and_show_usage():
    for name in ("preprocess.sh", "preprocess.sbatch"):
        subprocess.run(["bash", "-n", str(SLURM / name)], check=True)
    result = subprocess.run(
        ["bash", str(SLURM / "preprocess.sh"), "--tasks", "2"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--tasks, --work and --output are required" in result.stderr
    assert "bash launch/slurm/preprocess.sh --tasks 16" in result.stderr
    script = (SLURM / "preprocess.sbatch").read_text()
    assert 'exec "${PYTHON:-python3}" -m data_tools.array_job "$phase" "$@"' in script
