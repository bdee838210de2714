"""The house's floors: which top-level packages each package's modules may import (statically, anywhere in
the file: module level or inside a function). model/, data_tools/ and launch/ import nothing of training/;
only training/, plan/, evaluation/, bench/ and the entry points join them; nothing below plan/ imports it.
evaluation/ reads training's checkpoints; training/ uses only evaluation's tools that know nothing of a
run (the sandbox, HumanEval's problems, greedy completion) for HumanEval during training, and those
import nothing of training/, so the two never form a loop. cmdline/ (what every console script shares:
the parser, the logging setup, the exit statuses; standard library only) is the floor under them all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"cmdline", "model", "data_tools", "launch", "training", "plan", "evaluation", "bench", "pretrain_gpt"}
ALLOWED = {
    "cmdline": {"cmdline"},  # the console scripts' shared conventions: the floor under every other package
    "model": {"cmdline", "model"},
    "data_tools": {"cmdline", "data_tools"},
    "launch": {"cmdline", "launch"},
    "training": {"cmdline", "training", "model", "data_tools", "launch"},
    "plan": {"cmdline", "plan", "training", "model"},
    "evaluation": {"cmdline", "evaluation", "training", "model", "data_tools", "launch"},
}
# Modules of evaluation/ that training/ may import: they hold no run state and import nothing of training/.
EVALUATION_TOOLS = {"evaluation.generate", "evaluation.humaneval", "evaluation.sandbox"}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports absolutely (`from a.b import c` gives a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def imported_packages(path: Path, package: str = "") -> set[str]:
    """Our top-level packages that `path` imports (absolute imports; relative ones stay in the package);
    for training/, evaluation's tools do not count."""
    modules = imported_modules(path)
    if package == "training":
        modules -= EVALUATION_TOOLS
    return {m.split(".")[0] for m in modules} & OURS


@pytest.mark.parametrize("package", ALLOWED)
def test_each_package_imports_only_the_floors_below_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {
        str(f.relative_to(ROOT)): sorted(imported_packages(f, package) - ALLOWED[package])
        for f in files
        if imported_packages(f, package) - ALLOWED[package]
    }
    assert not wrong, wrong


def test_the_evaluation_tools_training_uses_import_nothing_of_training():
    for module in sorted(EVALUATION_TOOLS):
        path = ROOT / (module.replace(".", "/") + ".py")
        assert "training" not in imported_packages(path), module
        assert (
            not {m for m in imported_modules(path) if m.startswith("evaluation.")}
            - EVALUATION_TOOLS
            - {
                "evaluation.sampling",
                "evaluation.records",
                "evaluation.sandbox_boot",
                "evaluation.checkpoint",  # inside generate's main() only: the console script, not complete()
            }
        ), module


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from training.loop import Trainer\n    import plan.cli\n")
    assert imported_packages(bad) == {"training", "plan"}
