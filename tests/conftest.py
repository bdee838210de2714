"""Fixtures shared by every test package, and the rule that CI cannot pass by skipping.

Without root, namespaces or an extra, tests skip and say why, so `make test` works for any user. Under
`CI=true` (what CI services set) a skip means a prerequisite is missing on the machine that is meant to have
them all: every skip of a test not marked `gpu` (needs a CUDA device), at collection (a module's
`importorskip`) or at run time, is listed with its reason at the end and makes the run fail (exit 1).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CI_SKIPS = pytest.StashKey[list[tuple[str, str]]]()  # (node id, reason) of skips CI does not allow


def ci_strict() -> bool:
    """CI=true (or 1/yes): GitHub Actions, GitLab CI and most others set CI=true."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[CI_SKIPS] = []


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The reason pytest.skip was given: longrepr is (path, line, "Skipped: reason") for a skip."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    allowed = hasattr(report, "wasxfail") or item.get_closest_marker("gpu") is not None
    if ci_strict() and report.skipped and not allowed:
        item.config.stash[CI_SKIPS].append((item.nodeid, _skip_reason(report)))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    report = yield
    if ci_strict() and report.skipped and not collector.get_closest_marker("gpu"):
        collector.config.stash[CI_SKIPS].append((collector.nodeid, _skip_reason(report)))
    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if not ci_strict():
        return
    skips = config.stash.get(CI_SKIPS, [])
    total = len([r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")])
    if not skips:
        if total:
            terminalreporter.write_line(f"CI=true: {total} skipped, all marked gpu (they need a CUDA device)")
        return
    terminalreporter.section("skips that CI does not allow", red=True)
    terminalreporter.write_line(
        f"CI=true: {len(skips)} of {total} skipped tests are not marked gpu: a prerequisite is missing here "
        "(scripts/install_system_deps.sh, root, the [dev] extra). Each, with its reason:"
    )
    for nodeid, reason in skips:
        terminalreporter.write_line(f"  {nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(CI_SKIPS, []) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Console scripts called in-process configure the root logger (basicConfig, some with force=True) with
    a stream that pytest closes after the test; later tests would log into it ("--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs("4m")`: a fresh tmpfs of that size under tmp_path, a real disk that fills up (needs root, as
    the tests run); unmounted at the end of the test."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)
