"""The sandbox against hostile programs: real processes, real namespaces, real unprivileged users.

The tests run as root (the in-process sandbox is the "root" kind); the "user" kind, the refusal where user
namespaces are forbidden and the unisolated mode run in child processes as unprivileged uids, with an
interpreter those uids can execute."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluation import cli
from evaluation.sandbox import REFUSAL, UID_BASE, Limits, Sandbox, SandboxUnavailable, probe_isolation

TIMEOUT = 1.5
ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
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
    assert "Refusing to run untrusted code without isolation" in message and "\n" not in message
    assert "--unsafe-no-isolation" in message and "network connections" in message


def test_cli_refuses_and_explains_the_flag(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr("evaluation.sandbox.probe_isolation", lambda: "not running as root (simulated)")
    with pytest.raises(SystemExit) as exited:
        cli.main(
            ["humaneval", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "-n", "1", "--k", "1"]
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "not running as root (simulated)" in err and "--unsafe-no-isolation" in err
    assert "DANGEROUS" in cli.UNSAFE_HELP and "network" in cli.UNSAFE_HELP


def test_verdicts(sandbox: Sandbox) -> None:
    assert sandbox.run("assert sum([1, 2]) == 3\nprint('ok')").verdict == "passed"
    assert sandbox.run("assert 1 == 2, 'wrong'").verdict == "failed: AssertionError: wrong"
    assert sandbox.run("import sys\nsys.exit(0)").verdict == "failed: SystemExit: 0"
    assert sandbox.run("def f(:\n").verdict.startswith("failed: SyntaxError")


@pytest.mark.parametrize(
    "forgery",
    [
        "import os\nos._exit(0)\n",
        "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\ntime.sleep(5)\n",
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'passed')\n    except OSError:\n"
        "        pass\nos._exit(0)\n",
    ],
    ids=["os._exit", "exit-from-a-thread", "write-every-fd"],
)
def test_exit_status_zero_before_the_end_is_no_pass(sandbox: Sandbox, forgery: str) -> None:
    """A program that ends with status 0 before its last statement ran (here: before a failing
    assertion) is not passed: the pass needs the nonce written after the source ran to its end."""
    result = sandbox.run(forgery + "assert False, 'the check fails'\n")
    assert (
        result.returncode == 0 and result.verdict == "failed: the program exited with status 0 before its end"
    )


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


# ---- the host stays read-only ----------------------------------------------------------------------------


@pytest.fixture
def world_writable() -> Iterator[Path]:
    """A directory anyone may write, on the host's own filesystem: not under /tmp, /var/tmp or /dev/shm,
    which the sandbox covers with private tmpfs (a write there would prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix=".sandbox-host-", dir=ROOT))
    assert not str(path).startswith(("/tmp/", "/var/tmp/", "/dev/shm/")), path
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def test_world_writable_host_directory_is_read_only_inside(sandbox: Sandbox, world_writable: Path) -> None:
    target = world_writable / "escape"
    result = sandbox.run(f"open({str(target)!r}, 'w').write('x')\n")
    assert result.verdict.startswith("failed: OSError: [Errno 30] Read-only file system"), result.verdict
    assert list(world_writable.iterdir()) == []


# A seccomp filter (x86-64) that makes the kernel refuse every read-only remount: mount_setattr(2), and
# mount(2) with MS_REMOUNT in its flags, fail with EPERM; everything else is allowed. It is inherited by
# unshare and the sandbox's init, so the remount fails for real, as on a kernel or a container that
# forbids it.
NO_REMOUNT = r"""
import ctypes, struct
ALLOW, EPERM = 0x7FFF0000, 0x00050001
prog = [(0x20, 0, 0, 4), (0x15, 0, 5, 0xC000003E), (0x20, 0, 0, 0), (0x15, 4, 0, 442), (0x15, 0, 2, 165),
        (0x20, 0, 0, 40), (0x45, 1, 0, 32), (0x06, 0, 0, ALLOW), (0x06, 0, 0, EPERM)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(Prog(len(prog), ctypes.addressof(buf))), 0, 0) == 0, ctypes.get_errno()
"""


@needs_isolation
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter is written for x86-64")
def test_a_failed_read_only_remount_refuses_the_run(world_writable: Path) -> None:
    target = world_writable / "escape"
    code = (
        NO_REMOUNT
        + f"""
from evaluation.sandbox import Limits, Sandbox, SandboxUnavailable
try:
    result = Sandbox(Limits(timeout=5.0)).run({f"open({str(target)!r}, 'w').write('x')"!r})
    print(json.dumps({{"verdict": result.verdict}}))
except SandboxUnavailable as e:
    print(json.dumps({{"refused": str(e)}}))
"""
    )
    out = run_python(code, python=sys.executable)
    assert "refused" in out, out
    assert "could not confine it" in out["refused"] and "read-only" in out["refused"], out
    assert "Operation not permitted" in out["refused"] and "\n" not in out["refused"]
    assert list(world_writable.iterdir()) == []


# ---- as an unprivileged user: user namespaces, or a clear refusal ----------------------------------------


def shared_python() -> str:
    """An interpreter uid 65534 can execute in a user namespace (this one may live in a private directory
    such as /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        command = [*NOBODY, "unshare", "--user", "--map-root-user", str(candidate), "-c", ""]
        if candidate and subprocess.run(command, capture_output=True).returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that uid 65534 can execute")


def run_python(code: str, *, python: str, prefix: tuple[str, ...] = (), stdin: str = "") -> dict:
    """Run `code` with the repository importable; the JSON object it prints last."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}  # no HOME: the user's own, from passwd
    head = f"import json, os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
    done = subprocess.run(
        [*prefix, python, "-I", "-c", head + code],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


USER_PROGRAMS = {
    "pass": "assert sum([1, 2]) == 3\n",
    "fail": "assert 1 == 2, 'wrong'\n",
    "capabilities": "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n",
    "remount": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(None, b'/', None, 32 | 4096, None) == 0, 'remount refused'\n"
    ),
    "user namespace": (
        "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0, 'no user namespace'\n"
    ),
    "kill everything": (
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
        "print('still here')\n"
    ),
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
}


@pytest.mark.skipif(probe_isolation() is not None, reason="needs root to create the unprivileged user")
def test_unprivileged_user_runs_candidates_in_user_namespaces(world_writable: Path) -> None:
    """uid 65534 (nobody), not root: the candidates run isolated in user namespaces, pass and fail as they
    should, reach no network, cannot write the host, hold no capability, and cannot signal the host."""
    programs = {
        **USER_PROGRAMS,
        "write": f"open({str(world_writable / 'escape')!r}, 'w').write('x')\n",
    }
    sentinel = subprocess.Popen([*NOBODY, "sleep", "60"])  # a process of the same uid on the host
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            server.settimeout(0.5)
            port = server.getsockname()[1]
            programs["network"] = (
                f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            )
            code = """
from evaluation.sandbox import Limits, Sandbox, probe_isolation
sandbox = Sandbox(Limits(timeout=3.0))
results = {name: sandbox.run(p) for name, p in json.loads(sys.stdin.read()).items()}
out = {name: [r.verdict, r.stdout.strip()] for name, r in results.items()}
print(json.dumps({"uid": os.getuid(), "probe": probe_isolation(), "mode": sandbox.mode, **out}))
"""
            out = run_python(code, python=shared_python(), prefix=tuple(NOBODY), stdin=json.dumps(programs))
            with pytest.raises(TimeoutError):
                server.accept()
        assert sentinel.poll() is None, "a candidate killed a process of its user on the host"
    finally:
        sentinel.kill()
        sentinel.wait()
    assert (out.pop("uid"), out.pop("probe"), out.pop("mode")) == (65534, None, "user")
    assert out.pop("pass") == ["passed", ""]
    assert out.pop("fail")[0] == "failed: AssertionError: wrong"
    assert out.pop("capabilities") == ["passed", "0000000000000000"]
    assert out.pop("remount")[0] == "failed: AssertionError: remount refused"
    assert out.pop("user namespace")[0] == "failed: AssertionError: no user namespace"
    assert out.pop("kill everything") == ["passed", "still here"]
    assert out.pop("fork bomb")[0].startswith(("failed", "killed", "timed out"))
    assert out.pop("write")[0].startswith("failed: OSError: [Errno 30] Read-only file system")
    assert out.pop("network")[0].startswith("failed: OSError")
    assert out == {} and list(world_writable.iterdir()) == []


# Starts as root, becomes host uid 100000 with no groups, enters a new user namespace, waits for the
# test to map 0..65535 there to 100000..165535, then runs the command as that namespace's root.
ENTER_USER_NAMESPACE = r"""
import ctypes, os, sys
os.setgroups([]); os.setresgid(100000, 100000, 100000); os.setresuid(100000, 100000, 100000)
assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0, ctypes.get_errno()
print("ready", flush=True)
sys.stdin.readline()
os.execvp(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.skipif(probe_isolation() is not None, reason="needs root to create the unprivileged user")
def test_refusal_names_the_setting_where_user_namespaces_are_forbidden() -> None:
    """user.max_user_namespaces is set to 0 in a user namespace of the test's own (the setting is per
    namespace: the host's stays as it is); a non-root user in there is refused in one line naming it."""
    host_setting = Path("/proc/sys/user/max_user_namespaces").read_text()
    code = """
from evaluation.sandbox import Sandbox, SandboxUnavailable
try:
    Sandbox()
    print(json.dumps({"isolated": True}))
except SandboxUnavailable as e:
    print(json.dumps({"refused": str(e)}))
"""
    inner = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {' '.join(NOBODY)} {shared_python()} -I -c "
    head = f"import json, os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTER_USER_NAMESPACE, "sh", "-c", inner + '"$0"', head + code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env={"PATH": os.environ["PATH"]},
    )
    assert proc.stdout.readline() == "ready\n"
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{proc.pid}/{name}").write_text("0 100000 65536\n")
    stdout, stderr = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, stderr
    refused = json.loads(stdout.splitlines()[-1])["refused"]
    assert "user.max_user_namespaces = 0" in refused and "sysctl -w user.max_user_namespaces=" in refused
    assert refused.startswith("Refusing to run untrusted code without isolation") and "\n" not in refused
    assert Path("/proc/sys/user/max_user_namespaces").read_text() == host_setting


# ---- without namespaces, as root: still not as root -----------------------------------------------------


def test_unisolated_as_root_runs_programs_under_their_own_uid() -> None:
    """Where namespaces are missing and the caller accepts it, root still runs each program under a fresh
    unprivileged uid: os.getuid() is not 0, RLIMIT_NPROC bounds a fork bomb, kill(-1) reaches no process
    of root or of another user, and the processes a program leaves behind are killed after it."""
    sentinels = [subprocess.Popen(["sleep", "60"]), subprocess.Popen([*NOBODY, "sleep", "60"])]
    programs = {
        "uid": "import os\nprint(os.getuid())\n",
        "fork bomb": (
            "import os, time\nn = 0\ntry:\n    while n < 100:\n        if os.fork() == 0:\n"
            "            time.sleep(2)\n            os._exit(0)\n        n += 1\n"
            "except OSError:\n    pass\nprint(n)\n"
        ),
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('still here')\n",
        "leave a process": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n",
    }
    code = """
from evaluation.sandbox import Limits, Sandbox
limits = Limits(timeout=5.0, max_processes=8)
sandbox = Sandbox(limits, network_isolation="unavailable", allow_unisolated=True)
results = {name: sandbox.run(p) for name, p in json.loads(sys.stdin.read()).items()}
out = {name: [r.verdict, r.stdout.strip()] for name, r in results.items()}
print(json.dumps({"mode": sandbox.mode, **out}))
"""
    try:
        out = run_python(code, python=shared_python(), stdin=json.dumps(programs))
        assert [s.poll() for s in sentinels] == [None, None], "a candidate killed another user's process"
    finally:
        for sentinel in sentinels:
            sentinel.kill()
            sentinel.wait()
    assert out.pop("mode") == "none"
    verdict, uid = out.pop("uid")
    assert verdict == "passed" and int(uid) >= UID_BASE
    verdict, forks = out.pop("fork bomb")
    assert verdict == "passed" and int(forks) < 8  # the program itself counts as one of the 8
    assert out.pop("kill everything") == ["passed", "still here"]
    assert out.pop("leave a process")[0] == "passed"
    assert out == {}
    deadline = time.monotonic() + 5  # SIGKILLed orphans vanish once reaped
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


def test_cli_help_names_what_the_unisolated_flag_gives_up(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["humaneval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--unsafe-no-isolation" in help_text and "--unsafe-allow-network" not in help_text
    for risk in ("network", "write", "fork bomb", "kill", "read"):
        assert risk in help_text, risk
