"""tests/conftest.py's CI rule, run in a real pytest process on small generated test files: under CI=true a
skip of a test not marked gpu fails the run and is listed with its reason; gpu skips and plain runs pass."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "test_needs_root.py": """
        import pytest

        @pytest.fixture
        def namespaces():
            pytest.skip("simulated clusters need root")

        def test_runs():
            pass

        def test_cluster(namespaces):
            pass
    """,
    "test_needs_gpu.py": """
        import pytest

        @pytest.mark.gpu
        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_kernel():
            pass

        @pytest.mark.gpu
        def test_triton():
            pytest.importorskip("no_such_module_for_gpu_test")

        def test_runs():
            pass
    """,
    "test_needs_extra.py": """
        import pytest

        pytest.importorskip("no_such_extra_module", reason="needs the [eval] extra")

        def test_problems():
            pass
    """,
    "test_in_body.py": """
        import pytest

        def test_sandbox():
            pytest.skip("no namespace isolation here")
    """,
}


def run_pytest(tmp_path: Path, names: list[str], ci: str | None) -> subprocess.CompletedProcess:
    for name in names:
        (tmp_path / name).write_text(textwrap.dedent(FILES[name]))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", *names]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "name, nodeid, reason",
    [
        ("test_needs_root.py", "test_needs_root.py::test_cluster", "simulated clusters need root"),
        ("test_needs_extra.py", "test_needs_extra.py", "needs the [eval] extra"),
        ("test_in_body.py", "test_in_body.py::test_sandbox", "no namespace isolation here"),
    ],
)
def test_under_ci_a_skip_not_marked_gpu_fails_the_run_naming_it(tmp_path, name, nodeid, reason):
    result = run_pytest(tmp_path, [name, "test_needs_gpu.py"], ci="true")
    assert result.returncode == 1, result.stdout
    assert "skips that CI does not allow" in result.stdout
    assert f"  {nodeid}: {reason}" in result.stdout.splitlines(), result.stdout
    assert "test_kernel" not in result.stdout.split("skips that CI does not allow")[1]


def test_under_ci_gpu_skips_pass_and_are_counted(tmp_path):
    result = run_pytest(tmp_path, ["test_needs_gpu.py"], ci="true")
    assert result.returncode == 0, result.stdout
    assert "CI=true: 2 skipped, all marked gpu (they need a CUDA device)" in result.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_without_ci_skips_are_allowed(tmp_path, ci):
    result = run_pytest(tmp_path, ["test_needs_root.py", "test_needs_extra.py", "test_in_body.py"], ci=ci)
    assert result.returncode == 0, result.stdout
    assert "skips that CI does not allow" not in result.stdout and "CI=true" not in result.stdout

