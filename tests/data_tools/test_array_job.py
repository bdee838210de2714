"""The array job (data_tools.array_job, launch/slurm/preprocess.sh) gives the single-process job's dataset;
its errors name the unfinished tasks and the commands that run them; finished tasks rerun as no-ops."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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


FAKE_SBATCH = '''\
"""sbatch for tests: runs the script at once (each array index in turn) and prints a job id; with
$FAKE_SBATCH_FAIL=K, the K-th submission fails."""
import json, os, re, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_STATE"])
jobs = json.loads(state.read_text()) if state.exists() else []
if len(jobs) + 1 == int(os.environ.get("FAKE_SBATCH_FAIL", "0")):
    sys.exit("sbatch: error: Batch job submission failed: Invalid partition name specified")
args, opts = sys.argv[1:], {}
while args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
script, script_args = args[0], args[1:]
after = opts.get("dependency", "")
assert not after or re.fullmatch(r"afterok:\\d+", after), after
if after and jobs[int(after.split(":")[1]) - 1]["state"] != "COMPLETED":
    sys.exit("sbatch: error: dependency never satisfied")
job_id = len(jobs) + 1
indexes = []
if "array" in opts:
    first, last = map(int, opts["array"].split("-"))
    indexes = list(range(first, last + 1))
ok = True
for index in indexes or [None]:
    env = dict(os.environ, SLURM_JOB_ID=str(job_id), SLURM_JOB_NAME=opts.get("job-name", "sbatch"))
    name = opts.get("output", "slurm-%j.out").replace("%x", env["SLURM_JOB_NAME"]).replace("%j", str(job_id))
    if index is not None:
        env |= {"SLURM_ARRAY_JOB_ID": str(job_id), "SLURM_ARRAY_TASK_ID": str(index)}
        env["SLURM_ARRAY_TASK_COUNT"] = str(len(indexes))
        name = name.replace("%A", str(job_id)).replace("%a", str(index))
    with open(name, "w") as log:
        ok &= subprocess.run(["bash", script, *script_args], env=env, stdout=log, stderr=log).returncode == 0
jobs.append({"id": job_id, "opts": opts, "args": script_args, "state": "COMPLETED" if ok else "FAILED"})
state.write_text(json.dumps(jobs))
print(f"{job_id};cluster" if "parsable" in opts else f"Submitted batch job {job_id}")
'''


@pytest.fixture
def fake_slurm(tmp_path) -> dict[str, str]:
    """The environment of a login node whose sbatch is FAKE_SBATCH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!{sys.executable}\n{FAKE_SBATCH}")
    (bin_dir / "sbatch").chmod(0o755)
    return dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PYTHON=sys.executable,
        FAKE_SLURM_STATE=str(tmp_path / "jobs.json"),
    )


def test_slurm_driver_runs_the_array_job_and_it_equals_the_single_process_job(
    tmp_path, corpus, reference, fake_slurm
):
    env = fake_slurm
    work, out = tmp_path / "work", tmp_path / "data"
    cmd = [
        "bash",
        str(SLURM / "preprocess.sh"),
        "--tasks",
        str(TASKS),
        "--work",
        str(work),
        "--output",
        str(out),
    ]
    result = subprocess.run([*cmd, "--", *corpus], cwd=tmp_path, env=env, capture_output=True, text=True)
    logs = "".join(p.read_text() for p in sorted((work / "logs").glob("*.out")))
    assert result.returncode == 0, result.stderr + logs
    assert result.stdout.splitlines()[:4] == ["scan 1", "keep 2", "encode 3", "merge 4"]

    jobs = json.loads((tmp_path / "jobs.json").read_text())
    assert [j["args"][0] for j in jobs] == ["scan", "keep", "encode", "merge"]
    assert all(j["state"] == "COMPLETED" for j in jobs), logs
    assert [j["opts"].get("array") for j in jobs] == ["0-2", None, "0-2", None]
    assert [j["opts"].get("dependency") for j in jobs] == [None, "afterok:1", "afterok:2", "afterok:3"]
    assert all(j["args"][1:7] == ["--tasks", "3", "--work", str(work), "--output", str(out)] for j in jobs)
    assert sorted(p.name for p in (work / "logs").iterdir()) == [
        "preprocess-encode-3_0.out",
        "preprocess-encode-3_1.out",
        "preprocess-encode-3_2.out",
        "preprocess-keep-2.out",
        "preprocess-merge-4.out",
        "preprocess-scan-1_0.out",
        "preprocess-scan-1_1.out",
        "preprocess-scan-1_2.out",
    ]
    # Every task had inputs, and the duplicates crossed tasks.
    scans = [json.loads((work / "scan" / f"task_{t:05d}.json").read_text()) for t in range(TASKS)]
    assert all(s["rows"]["count"] > 0 for s in scans)
    report = load_manifest(out)["report"]
    assert (
        report["removed"]["exact_duplicate"]["docs"] == 2 and report["removed"]["near_duplicate"]["docs"] == 1
    )
    assert {"autogenerated", "chars_per_token"} <= set(report["removed"])
    assert report["bad_input"]["counts"] == {"malformed_json": 1}
    assert_same_dataset(out, reference)
    assert len(load_manifest(out)["splits"]["train"]["shards"]) > TASKS  # several shards per task


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


def test_slurm_driver_stops_when_sbatch_fails_and_names_the_jobs_to_cancel(tmp_path, fake_slurm):
    cmd = [
        "bash",
        str(SLURM / "preprocess.sh"),
        "--tasks",
        "2",
        "--work",
        "w",
        "--output",
        "o",
        "--",
        "--quiet",
    ]
    env = fake_slurm | {"FAKE_SBATCH_FAIL": "2", "PYTHON": "true"}  # the scan jobs do nothing
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout.splitlines() == ["scan 1"]
    assert "error: sbatch failed for the keep phase" in result.stderr
    assert "Invalid partition name" in result.stderr and "scancel 1" in result.stderr


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
