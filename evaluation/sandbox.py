"""Run an untrusted Python program (a HumanEval candidate) in a confined, throw-away process tree.

One `Sandbox.run(program)` call = one fresh process tree:

    evaluator ── setpriv --pdeathsig KILL unshare [--user --map-root-user] --net --pid --mount --ipc --uts
                 --fork --kill-child --mount-proc     (its own session; its life tied to the evaluator's)
                   └─ python -I sandbox_boot.py CONFIG    PID 1 of the new PID namespace (root there):
                        hides private directories, makes every mount read-only (and checks it), mounts
                        private size-capped tmpfs on /tmp (the work directory is /tmp/work), /var/tmp and
                        /dev/shm, then forks
                        └─ the program: rlimits, no_new_privs, no privilege left (below),
                           cwd = HOME = TMPDIR = the work directory, exec() of the source

Two kinds of isolation, chosen by who runs the evaluator:
- "root" (the evaluator is root): namespaces of the host's root; the program switches to a fresh
  unprivileged uid of its own (never reused by a concurrent run of this evaluator).
- "user" (any other user, where the kernel allows unprivileged user namespaces): the same namespaces
  inside a new user namespace in which only the evaluator's uid is mapped, to 0. The program stays that
  uid 0 but holds no capability (empty bounding set, locked secure bits), and may create no user namespace
  of its own. On the host it is the evaluator's user.

What each layer buys:
- network: a new network namespace holds only a loopback device that is down: no connection leaves,
  not even to 127.0.0.1 of the host.
- signals: the program sees only its own PID namespace (the evaluator's pid does not exist there); its
  parent is the namespace's init, which ignores signals from inside. When that init exits, the kernel kills
  whatever the program left behind.
- fork bombs: RLIMIT_NPROC counts processes per uid, per user namespace (Linux 5.14+), and is not enforced
  for the host's root: with a fresh uid ("root") or a user namespace of its own ("user") the limit is the
  candidate's alone.
- files: the private mount namespace sees the host's filesystem read-only (and nosuid); if any mount is
  still writable after the remount, the run is refused (`SandboxUnavailable`), never run "best effort".
  The only writable places are tmpfs mounts that vanish with the namespace, each capped in size.
  RLIMIT_FSIZE caps a file. Any directory others cannot traverse, and ("user") the evaluator's home, is
  covered by an empty tmpfs, but for the interpreter's own directories bind-mounted back.
- memory and CPU: RLIMIT_AS per process, RLIMIT_CPU, and a wall-clock timeout after which the evaluator
  kills the whole process group (the namespace's init, and with it everything inside).
- output: stdout and stderr are pipes drained by the evaluator, which keeps only the first and last
  `max_output_bytes` of each, so a program printing gigabytes costs time, not memory.
- the verdict: "passed" needs the program's source to have run to its last statement, which the program
  process reports with a random nonce on a pipe of its own; the init reports that and the exit status on a
  pipe the program never holds. An `os._exit(0)` before the end is no pass.

What it cannot do: the program can read every world-readable file of the host ("user": every file the
evaluator's user can read, outside its home); the memory bound is per process (max_processes x
memory_bytes in the worst case; no cgroup is used); code in the same process as the check can still
forge a pass on purpose (replace the check's functions, or find the nonce and the pipe in its own memory).

Without namespaces ("unavailable") the sandbox refuses unless `allow_unisolated=True`. Then nothing above
holds but the rlimits, the timeout, the new session and the temporary directory: the program can use the
network and write wherever its uid may. Started by root it still runs under a fresh unprivileged uid (its
RLIMIT_NPROC bounds a fork bomb, `kill(-1)` reaches only its own processes, which are all killed after the
run); started by another user it runs as that user.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Literal

from evaluation.sandbox_boot import EXIT_FAILED, EXIT_MEMORY, EXIT_PASSED

log = logging.getLogger(__name__)

Isolation = Literal["auto", "namespace", "unavailable"]
Mode = Literal["root", "user", "none"]

UNSHARE_FLAGS = ("--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
USER_FLAGS = ("--user", "--map-root-user")
BOOT = pathlib.Path(__file__).with_name("sandbox_boot.py")
# Each run gets its own uid from this range (see "fork bombs" above); well above any real account.
UID_BASE = 200_000
UIDS_PER_PROCESS = 4096
UNISOLATED_FLAG = "--unsafe-no-isolation"

REFUSAL = (
    "Refusing to run untrusted code without isolation: {reason}. The sandbox needs Linux namespaces "
    "(util-linux `unshare`): as root, or as any user where the kernel allows unprivileged user "
    "namespaces, to cut the network, keep the host filesystem read-only and contain the process tree. "
    "Fix that, or pass allow_unisolated=True (codeparrot-eval: " + UNISOLATED_FLAG + ") to run anyway: "
    "the programs can then open network connections, write wherever their uid may, and (unless you are "
    "root) signal or kill your other processes."
)


class SandboxUnavailable(RuntimeError):
    """Isolation is not available here (or failed) and the caller did not accept running without it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """Resource limits of one run. Sizes in bytes, times in seconds."""

    timeout: float = 3.0  # wall clock, the whole tree is killed after it
    memory_bytes: int = 1 << 30  # RLIMIT_AS of each process
    max_processes: int = 16  # RLIMIT_NPROC (processes and threads of the run's uid)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE, and the size of each private tmpfs
    max_output_bytes: int = 64 << 10  # kept of the head and of the tail of stdout and of stderr


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one run. `verdict` is "passed", "failed: <exception line>", "timed out",
    "killed: memory" or "killed: <SIGNAL>"."""

    verdict: str
    returncode: int | None
    duration: float  # seconds, wall clock
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"


def _read_sysctl(path: str) -> str | None:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return None


def _userns_blocker() -> str | None:
    """Why this kernel refuses unprivileged user namespaces, with the setting that allows them; None if
    no known setting forbids them."""
    settings = (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=1"),
        ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=15000"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    )
    for path, forbidding, allowing in settings:
        if _read_sysctl(path) == forbidding:
            name = path.removeprefix("/proc/sys/").replace("/", ".")
            return (
                f"this kernel forbids user namespaces to non-root users ({name} = {forbidding}); an "
                f"administrator can allow them with `sysctl -w {allowing}`, or run the evaluation as root"
            )
    return None


@functools.lru_cache(maxsize=2)
def _probe(euid: int) -> str | None:
    if not sys.platform.startswith("linux"):
        return f"namespaces are Linux-only (this is {sys.platform})"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux `unshare` is not on PATH"
    flags = UNSHARE_FLAGS if euid == 0 else (*USER_FLAGS, *UNSHARE_FLAGS)
    # The interpreter itself, not `true`: some places it lives in cannot be executed from a user namespace.
    command = [*flags, sys.executable, "-I", "-S", "-c", ""]
    try:
        subprocess.run([unshare, *command], capture_output=True, timeout=30, check=True)
    except subprocess.CalledProcessError as e:
        failed = f"`unshare {' '.join(command)}` failed: {e.stderr.decode(errors='replace').strip()}"
        blocker = None if euid == 0 else _userns_blocker()
        return failed if blocker is None else f"{blocker} ({failed})"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare` could not run: {e}"
    return None


def probe_isolation() -> str | None:
    """None when namespace isolation works here for this user, else the reason it does not (tried once
    per process and user)."""
    return _probe(os.geteuid())


def _unreadable_interpreter() -> str | None:
    """The first interpreter library directory another uid cannot reach (unisolated runs as root switch
    to one, and no mount namespace can expose it), or None."""
    places = (sys.base_prefix, sys.base_exec_prefix, sys.prefix, os.path.dirname(sys.executable))
    for path in sorted({os.path.realpath(p) for p in places if os.path.isdir(p)}):
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            if not os.stat("/".join(parts[:i])).st_mode & 0o001:
                return "/".join(parts[:i])
    return None


class Sandbox:
    """Runs programs one process tree each; thread-safe, so several runs may go on in parallel.

    network_isolation: "auto" probes the machine, "namespace" requires namespaces (raises if they do not
    work), "unavailable" behaves as on a machine without them (for tests of the refusal).
    allow_unisolated: accept running without isolation when it is unavailable (see REFUSAL for the risk).
    `mode` is then "root", "user" (see the module docstring) or "none" (unisolated).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        allow_unisolated: bool = False,
        network_isolation: Isolation = "auto",
    ) -> None:
        self.limits = limits or Limits()
        if network_isolation == "unavailable":
            reason = "isolation marked unavailable by the caller"
        elif network_isolation in ("auto", "namespace"):
            reason = probe_isolation()
        else:
            raise ValueError(
                f"network_isolation must be auto, namespace or unavailable, not {network_isolation!r}"
            )
        if reason is not None and (network_isolation == "namespace" or not allow_unisolated):
            raise SandboxUnavailable(REFUSAL.format(reason=reason))
        root = os.geteuid() == 0
        self.mode: Mode = "none" if reason is not None else "root" if root else "user"
        self.isolated = self.mode != "none"
        if self.mode == "none" and root and (hidden := _unreadable_interpreter()) is not None:
            raise SandboxUnavailable(
                f"Refusing to run untrusted code unisolated as root: the programs would run under an "
                f"unprivileged uid, which cannot read this interpreter's library ({hidden} is not "
                f"traversable by others), so every import would fail. Run with a Python installed where "
                f"other users can read it (such as /usr/bin/python3), or where namespaces work"
            )
        if not self.isolated:
            log.warning(
                "running untrusted programs WITHOUT isolation (%s): network and host files exposed", reason
            )
        self._runs = itertools.count()
        self._lock = threading.Lock()

    def _next_uid(self) -> int | None:
        """The program's uid: a fresh one when root, 0 of its user namespace, or None (stay the user)."""
        if self.mode == "user":
            return 0
        if os.geteuid() != 0:
            return None
        with self._lock:
            i = next(self._runs)
        return UID_BASE + (os.getpid() % UIDS_PER_PROCESS) * UIDS_PER_PROCESS + i % UIDS_PER_PROCESS

    def run(self, program: str, *, timeout: float | None = None) -> Result:
        """Run `program` (Python source) to completion or until `timeout` (default: limits.timeout).

        Raises:
            SandboxUnavailable: the confinement failed (a mount stayed writable, a privilege could not
                be dropped): nothing was run.
        """
        timeout = self.limits.timeout if timeout is None else timeout
        root = tempfile.mkdtemp(prefix="codeparrot-sandbox-")
        try:
            return self._run_in(root, program, timeout)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _command(self, config: dict) -> list[str]:
        cmd = [sys.executable, "-I", "-B", str(BOOT), json.dumps(config)]
        if self.isolated:
            flags = UNSHARE_FLAGS if self.mode == "root" else (*USER_FLAGS, *UNSHARE_FLAGS)
            cmd = [shutil.which("unshare") or "unshare", *flags, "--", *cmd]
            if setpriv := shutil.which("setpriv"):
                # If the evaluator dies mid-run, unshare dies too, and with it the namespace (--kill-child).
                cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        return cmd

    def _run_in(self, root: str, program: str, timeout: float) -> Result:
        work = os.path.join(root, "work")
        os.mkdir(work)
        source_path = os.path.join(root, "program.py")
        with open(source_path, "w", encoding="utf-8") as f:
            f.write(program)
        uid = self._next_uid()
        if self.mode == "none" and uid is not None:
            os.chmod(root, 0o711)  # the program's uid reaches its work directory, not the source
            os.chown(work, uid, uid)
        status_r, status_w = os.pipe()
        config = {
            "mode": self.mode,
            "source": source_path,
            "work": work,  # isolated runs get a fresh one inside the namespace instead
            "uid": uid,
            "hide": [os.path.expanduser("~")] if self.mode == "user" else [],
            "status_fd": status_w,
            "cpu_seconds": int(timeout) + 1,
            "limits": dataclasses.asdict(self.limits),
        }
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._command(config),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=root,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group: killpg reaches the whole tree
                pass_fds=(status_w,),
            )
        finally:
            os.close(status_w)
        with os.fdopen(status_r, "rb") as status_pipe:
            return self._wait(proc, status_pipe, uid, timeout, start)

    def _wait(self, proc: subprocess.Popen, status_pipe, uid: int | None, timeout: float, start: float):
        cap = self.limits.max_output_bytes
        readers = [_CappedReader(proc.stdout, cap), _CappedReader(proc.stderr, cap)]
        timed_out = False
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            returncode = proc.wait()
        duration = time.monotonic() - start
        if not self.isolated:
            _kill_group(proc.pid)  # leftovers; in a PID namespace the kernel already did this
            if uid is not None:
                _kill_uid(uid)  # and those that left the group: every process of the run's uid
        for reader in readers:
            reader.join(timeout=5.0)  # a writer that escaped the group could hold the pipe open
        stdout, stderr = (reader.text() for reader in readers)
        status = _status(status_pipe.read())
        if "refused" in status:
            raise SandboxUnavailable(
                f"Refusing to run untrusted code: the sandbox could not confine it ({status['refused']}). "
                "Nothing was run; the host stays as it was"
            )
        if timed_out:
            return Result("timed out", None, duration, stdout, stderr)
        if "exit" not in status:
            verdict = f"failed: the sandbox ended without a verdict (exit status {returncode})"
            return Result(verdict, returncode, duration, stdout, stderr)
        code = status["exit"]
        return Result(_verdict(code, status["finished"], stderr), code, duration, stdout, stderr)


def _status(data: bytes) -> dict:
    try:
        status = json.loads(data)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`, from a process of that uid (kill(-1) spares only the caller)."""
    kill = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass"
    subprocess.run([sys.executable, "-I", "-S", "-c", kill], user=uid, group=uid, extra_groups=[], timeout=30)


class _CappedReader(threading.Thread):
    """Drains a pipe to EOF, keeping its first and last `cap` bytes (memory stays O(cap))."""

    def __init__(self, stream, cap: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.cap = stream, cap
        self.head, self.tail, self.total = bytearray(), bytearray(), 0
        self.start()

    def run(self) -> None:
        fd = self.stream.fileno()
        try:
            while chunk := os.read(fd, 1 << 16):
                self.total += len(chunk)
                if len(self.head) < self.cap:
                    take = self.cap - len(self.head)
                    self.head += chunk[:take]
                    chunk = chunk[take:]
                if chunk:
                    self.tail += chunk
                    del self.tail[: max(0, len(self.tail) - self.cap)]
        finally:
            self.stream.close()

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        middle = f"\n[... {dropped} bytes dropped ...]\n".encode() if dropped else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", errors="replace")


def _verdict(returncode: int, finished: bool, stderr: str) -> str:
    if returncode == EXIT_PASSED:
        return "passed" if finished else "failed: the program exited with status 0 before its end"
    if returncode == EXIT_MEMORY:
        return "killed: memory"
    if returncode == EXIT_FAILED:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return f"failed: {lines[-1].strip()[:300]}" if lines else "failed: exit status 1"
    signum = returncode - 128 if returncode > 128 else None
    if signum == signal.SIGXCPU:
        return "timed out"  # RLIMIT_CPU: a busy loop that beat the wall clock
    if signum == signal.SIGXFSZ:
        return "killed: file size limit"
    if signum is not None:
        try:
            return f"killed: {signal.Signals(signum).name}"
        except ValueError:
            pass
    return f"failed: exit status {returncode}"
