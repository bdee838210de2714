"""Every documented command works: each shell block of README.md and docs/*.md is run, in document order,
in one scratch directory that holds the repository's configs, scripts and virtual environment and small
inputs under the names the text uses (corpus/, raw/, corpus.jsonl). A changed flag breaks this test, not
the reader.

A block may be preceded by a marker, `<!-- doc-test: DIRECTIVE; DIRECTIVE -->`:
    needs gpu | needs cluster    not run here: the files and tools it names must exist
    env NAME=VALUE               for this block (e.g. a smaller DEMO_SECONDS)
    replace "A" with "B"         a smaller size, as the text next to the block says
    not "PREFIX" (why)           a command line left out, e.g. `make test`, the suite this test is part of
    exit N                       the status expected (default 0)
Transcripts (a block whose first line starts with `$ `) run their commands and must print the lines shown,
in order (`...` stands for lines left out)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_cli import console_scripts

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
LINKED = ["configs", "ds_configs", "launch", "scripts", "pretrain_gpt.py", "Makefile", "setup.py"]
LINKED += ["constraints.txt"]
MARKER = re.compile(r"^<!-- doc-test: (.*) -->$")


@dataclass
class Block:
    path: Path
    line: int
    text: str
    transcript: bool
    needs: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    replace: list[tuple[str, str]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    exit: int = 0

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _directives(block: Block, text: str) -> None:
    for part in (p.strip() for p in text.split(";")):
        if m := re.fullmatch(r"needs (gpu|cluster)", part):
            block.needs = m[1]
        elif m := re.fullmatch(r"env (\w+)=(\S+)", part):
            block.env[m[1]] = m[2]
        elif m := re.fullmatch(r'replace "(.+?)" with "(.*?)"', part):
            block.replace.append((m[1], m[2]))
        elif m := re.fullmatch(r'not "(.+?)"(?: \(.*\))?', part):
            block.drop.append(m[1])
        elif m := re.fullmatch(r"exit (\d+)", part):
            block.exit = int(m[1])
        else:
            raise AssertionError(f"{block.id}: unknown doc-test directive {part!r}")


def shell_blocks(path: Path) -> list[Block]:
    lines = path.read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)$", lines[i])
        if not fence:
            i += 1
            continue
        end = lines.index("```", i + 1)
        body = lines[i + 1 : end]
        transcript = fence[1] == "" and bool(body) and body[0].startswith("$ ")
        if fence[1] in SHELL or transcript:
            block = Block(path, i + 1, "\n".join(body), transcript)
            before = next((x for x in reversed(lines[:i]) if x.strip()), "")
            if m := MARKER.match(before):
                _directives(block, m[1])
            blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = [b for doc in DOCS for b in shell_blocks(doc)]


def _commands(block: Block) -> tuple[str, list[str]]:
    """The script to run and, for a transcript, the output lines it shows."""
    text = block.text
    for old, new in block.replace:
        assert old in text, f"{block.id}: replace {old!r}: not in the block"
        text = text.replace(old, new)
    if not block.transcript:
        lines = text.split("\n")
        kept = [x for x in lines if not any(x.lstrip().startswith(d) for d in block.drop)]
        assert len(kept) == len(lines) - len(block.drop), f"{block.id}: a `not` directive matched no line"
        return "\n".join(kept), []
    script, shown, continued = [], [], False
    for x in text.split("\n"):
        if x.startswith("$ ") or continued:
            script.append(x.removeprefix("$ "))
            continued = x.endswith("\\")
        else:
            shown.append(x.rstrip())
    return "\n".join(script), shown


def _programs(script: str) -> list[str]:
    """The first word of each command line (after VAR=value assignments)."""
    out = []
    for line in re.sub(r"\\\n", " ", script).split("\n"):
        words = shlex.split(line, comments=True) if line.strip() else []
        words = [w for w in words if not re.match(r"^\w+=", w)]
        if words:
            out.append(words[0])
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The scratch directory every block runs in: the repository's files by link, small inputs."""
    work = tmp_path_factory.mktemp("docs")
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    # Copies, not links: the benchmarks write their results beside their own files (resolved), and
    # bench.report --update rewrites docs/benchmarks.md; neither may touch the checkout.
    shutil.copytree(ROOT / "bench", work / "bench", ignore=shutil.ignore_patterns("results", "wheels"))
    shutil.copytree(ROOT / "docs", work / "docs")
    # The virtual environment in use, seen through links, with an install stamp of its own: `make` in the
    # scratch directory finds it installed and never installs this checkout from there.
    venv = Path(sys.prefix)
    (work / ".venv").mkdir()
    for name in ("bin", "lib", "include"):
        (work / ".venv" / name).symlink_to(venv / name)
    shutil.copy(venv / "pyvenv.cfg", work / ".venv" / "pyvenv.cfg")
    (work / ".venv" / ".installed").touch()
    stdlib = Path(os.__file__).parent
    sources = sorted(p for p in (stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    (work / "raw").mkdir()
    for p in sources:
        shutil.copy(p, work / "raw" / p.name)
    import json

    import zstandard

    records = [json.dumps({"content": p.read_text(), "path": p.name}) + "\n" for p in sources]
    (work / "corpus.jsonl").write_text("".join(records))
    (work / "corpus").mkdir()
    for k in range(2):
        data = "".join(records[k::2]).encode()
        (work / "corpus" / f"part_{k}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return work


def test_the_documents_have_shell_blocks_and_markers_parse():
    assert len(BLOCKS) >= 10
    assert all(b.needs in (None, "gpu", "cluster") for b in BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_documented_commands_run(block: Block, workspace: Path):
    script, shown = _commands(block)
    if block.needs:
        tools = set(console_scripts())
        for word in re.findall(r"(?<![\w/.-])((?:configs|ds_configs|launch|bench)/[\w./-]+)", script):
            assert (ROOT / word).exists(), f"{block.id}: {word} does not exist"
        for program in _programs(script):
            if program.startswith("codeparrot-"):
                assert program in tools, f"{block.id}: {program} is not a console script"
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **block.env}
    env.pop("CI", None)  # the commands as a user runs them
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = f"\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == block.exit, f"{block.id}: exit {result.returncode}{tail}"
    printed = iter(line.rstrip() for line in result.stdout.split("\n"))
    for line in shown:
        if line.strip() and line.strip() != "...":
            assert any(p == line for p in printed), f"{block.id}: not printed (in order): {line!r}{tail}"
