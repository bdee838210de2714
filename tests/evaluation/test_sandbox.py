"""The sandbox against hostile programs: real processes, real namespaces (root only, skipped elsewhere)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from evaluation import cli
from evaluation.sandbox import REFUSAL, UID_BASE, Limits, Sandbox, SandboxUnavailable, probe_isolation

TIMEOUT = 1.5
needs_isolation = pytest.mark.skipif(
    probe_isolation() is not None, reason=f"no namespace isolation here: {probe_isolation()}"
)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    if probe_isolation() is not None:
        pytest.skip(f"no namespace isolation here: {probe_isolation()}")
    return Sandbox(Limits(timeout=TIMEOUT, memory_bytes=512 << 20, max_output_bytes=8 << 10))


def sandbox_processes() -> list[int]:
    """Pids of live processes that run as a sandbox uid (any run, any evaluator on this host)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid_line and int(uid_line.split()[1]) >= UID_BASE:
            pids.append(int(entry.name))
    return pids


def test_refuses_without_isolation_unless_allowed() -> None:
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(network_isolation="unavailable")
    message = str(refused.value)
    assert message == REFUSAL.format(reason="isolation marked unavailable by the caller")
    assert "Refusing to run untrusted code without isolation" in message
    assert "--unsafe-allow-network" in message and "network connections" in message
    unsafe = Sandbox(network_isolation="unavailable", allow_network=True)
    assert not unsafe.isolated
    assert unsafe.run("print(6 * 7)").stdout == "42\n"


def test_cli_refuses_and_explains_the_flag(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr("evaluation.sandbox.probe_isolation", lambda: "not running as root (simulated)")
    with pytest.raises(SystemExit) as exited:
        cli.main(
            ["humaneval", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "-n", "1", "--k", "1"]
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "not running as root (simulated)" in err and "--unsafe-allow-network" in err
    assert "DANGEROUS" in cli.UNSAFE_HELP and "network" in cli.UNSAFE_HELP


def test_verdicts(sandbox: Sandbox) -> None:
    assert sandbox.run("assert sum([1, 2]) == 3\nprint('ok')").verdict == "passed"
    assert sandbox.run("assert 1 == 2, 'wrong'").verdict == "failed: AssertionError: wrong"
    assert sandbox.run("import sys\nsys.exit(0)").verdict == "failed: SystemExit: 0"
    assert sandbox.run("def f(:\n").verdict.startswith("failed: SyntaxError")


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    start = time.monotonic()
    result = sandbox.run("while True:\n    pass\n")
    assert result.verdict == "timed out"
    assert time.monotonic() - start < TIMEOUT + 1.5


@pytest.mark.parametrize(
    "bomb",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    ],
    ids=["plain", "persistent"],
)
def test_fork_bomb_is_contained(sandbox: Sandbox, bomb: str) -> None:
    result = sandbox.run(bomb)
    assert result.verdict.startswith(("failed", "killed", "timed out")), result.verdict
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the host still forks
    assert sandbox_processes() == []  # the whole tree is gone


@pytest.mark.parametrize(
    "hog", ["x = bytearray(64 << 30)\n", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"]
)
def test_memory_hog_is_killed(sandbox: Sandbox, hog: str) -> None:
    # A longer timeout than the other tests: touching 256 MiB takes a while on a loaded machine.
    roomy = Sandbox(Limits(timeout=10.0, memory_bytes=256 << 20))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert roomy.run(hog).verdict == "killed: memory"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 32 << 10
    assert sandbox.run("print(1)").verdict == "passed"


def test_writes_outside_the_work_directory_do_not_reach_the_host(sandbox: Sandbox, tmp_path: Path) -> None:
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [tmp_path / name, Path("/tmp") / name, Path.cwd() / name, Path("/var/tmp") / name]
    program = "import os\nopen('inside.txt', 'w').write('fine')\n" + "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError as e:\n    print(e)\n" for t in targets
    )
    try:
        result = sandbox.run(program)
        assert result.verdict == "passed", result.stderr
        assert [t for t in targets if t.exists()] == []
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_no_network_even_to_localhost(sandbox: Sandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = sandbox.run(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).send(b'x')\n"
        )
        assert result.verdict.startswith("failed: OSError"), result.verdict
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize("target", ["os.getppid()", "EVALUATOR", "-1", "0"])
def test_cannot_kill_the_evaluator(sandbox: Sandbox, target: str) -> None:
    target = target.replace("EVALUATOR", str(os.getpid()))
    result = sandbox.run(
        f"import os, signal\nos.kill({target}, signal.SIGKILL)\nos.kill({target}, signal.SIGTERM)\n"
    )
    assert result.verdict != "passed"  # a verdict was recorded, and this process is still here to see it
    assert sandbox.run("print('next candidate')").verdict == "passed"


def test_huge_output_is_capped(sandbox: Sandbox) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    result = sandbox.run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n")
    assert result.verdict == "passed"
    cap = sandbox.limits.max_output_bytes
    assert len(result.stdout) < 2 * cap + 100 and "bytes dropped" in result.stdout
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 32 << 10


@needs_isolation
def test_wall_clock_timeout_survives_a_new_session(tmp_path: Path) -> None:
    """A child that leaves the process group is still killed with the namespace."""
    quick = Sandbox(Limits(timeout=1.0))
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
    assert quick.run(program).verdict == "timed out"
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


@needs_isolation
def test_evaluator_death_takes_the_run_with_it(tmp_path: Path) -> None:
    code = "from evaluation.sandbox import *\nSandbox(Limits(timeout=60)).run('import time\\ntime.sleep(60)')"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # a killed evaluator leaves its staging directory
    evaluator = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2], env=env)
    try:
        deadline = time.monotonic() + 15
        while not sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox_processes(), "the run never started"
    finally:
        evaluator.kill()
        evaluator.wait()
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
