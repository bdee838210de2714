"""Every console script speaks one dialect (cmdline/): `--help` ends with an example and exits 0; a bad
argument or an unusable input is one paragraph on stderr (no traceback, no blank line) with exit status 2; a
check that fails exits 1. The tools are the real installed commands, found from setup.py, so a new one
must be added to the tables below."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MISSING = "/nonexistent/codeparrot-input"


def console_scripts() -> list[str]:
    """The console_scripts of setup.py, read from its source (no install metadata involved)."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [ast.literal_eval(e).split("=")[0] for e in value.elts]
    raise AssertionError("setup.py has no console_scripts")


TOOLS = console_scripts() + ["pretrain_gpt.py"]

# An input each tool cannot use: a path that does not exist where it reads one.
UNUSABLE = {
    "codeparrot-clean": ["--input", MISSING, "--output", "{tmp}/clean.jsonl"],
    "codeparrot-train-tokenizer": ["--input", MISSING, "--output", "{tmp}/tok"],
    "codeparrot-preprocess": ["--input", MISSING, "--output", "{tmp}/data"],
    "codeparrot-preprocess-array": [
        "scan", "--input", MISSING, "--output", "{tmp}/data", "--work", "{tmp}/work", "--task", "0",
        "--tasks", "1",
    ],  # fmt: skip
    "codeparrot-shards": [MISSING],
    "codeparrot-launch": ["--hostfile", MISSING, "pretrain_gpt.py"],
    "codeparrot-preflight": ["--hostfile", MISSING, "--save-dir", "{tmp}/run"],
    "codeparrot-export": [MISSING, "{tmp}/hf"],
    "codeparrot-eval": ["perplexity", MISSING, "--data", MISSING],
    "codeparrot-generate": [MISSING, "def f():"],
    "codeparrot-plan": ["--config", MISSING],
    "codeparrot-plot": [MISSING],
    "pretrain_gpt.py": ["--config", MISSING],
}


def run(tool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / tool)] if tool.endswith(".py") else [str(BIN / tool)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_paragraph(result: subprocess.CompletedProcess, *needles: str) -> None:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], err[-2000:])
    assert err and "Traceback" not in err and "\n\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_every_tool_is_in_the_tables():
    assert set(TOOLS) == set(UNUSABLE), set(TOOLS) ^ set(UNUSABLE)


@pytest.mark.parametrize("tool", TOOLS)
def test_help_ends_with_an_example(tool):
    result = run(tool, "--help")
    assert result.returncode == 0, result.stderr
    last = result.stdout.rstrip().split("\n\n")[-1]
    assert last.startswith("example:\n  "), last
    assert tool.removesuffix(".py") in last, last


@pytest.mark.parametrize("tool", TOOLS)
def test_a_bad_argument_is_one_paragraph_and_exit_2(tool):
    assert_one_paragraph(run(tool, "--no-such-flag", "x"), "error:")


@pytest.mark.parametrize("tool", TOOLS)
def test_an_unusable_input_is_one_paragraph_and_exit_2(tool, tmp_path):
    args = [a.format(tmp=tmp_path) for a in UNUSABLE[tool]]
    assert_one_paragraph(run(tool, *args), MISSING)


def test_a_failed_check_exits_1(tmp_path):
    """Tools that check something: a layout that does not fit, a shard that fails verification."""
    plan = run("codeparrot-plan", "--preset", "codeparrot", "--gpu", "a100-40gb", "--micro-batch", "16")
    assert plan.returncode == 1 and "DOES NOT FIT" in plan.stdout, plan.stderr
    shard = tmp_path / "shard"
    (tmp_path / "shard.bin").write_bytes(b"\0" * 8)
    (tmp_path / "shard.idx").write_bytes(b"not an index")
    shards = run("codeparrot-shards", str(shard), "--no-verify", "--quiet")
    assert shards.returncode == 1 and "error: " in shards.stderr and "Traceback" not in shards.stderr
    fits = run("codeparrot-plan", "--preset", "tiny", "--json")
    assert fits.returncode == 0 and json.loads(fits.stdout)["memory"]["fits"]
