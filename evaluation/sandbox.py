"""Run an untrusted Python program (a HumanEval candidate) in a confined, throw-away process tree.

One `Sandbox.run(program)` call = one fresh process tree, judged by its exit status:

    evaluator ── setpriv --pdeathsig KILL unshare --net --pid --mount --ipc --uts --fork --kill-child ...
                 (its own session; setpriv, where present, ties the tree's life to the evaluator's)
                   └─ python -I sandbox.py CONFIG        PID 1 of the new PID namespace, still root:
                        makes every mount read-only, mounts private size-capped tmpfs on /tmp (the
                        work directory is /tmp/work), /var/tmp and /dev/shm, then forks
                        └─ the program: rlimits, no_new_privs, setuid to a fresh unprivileged uid,
                           cwd = HOME = TMPDIR = the work directory, exec() of the source

What each layer buys (root, namespaces available: "namespace" isolation):
- network: a new network namespace holds only a loopback device that is down: no connection leaves,
  not even to 127.0.0.1 of the host.
- signals: the program sees only its own PID namespace (the evaluator's pid does not exist there) and runs
  as another uid (EPERM for everything else); its parent is the namespace's init, which ignores signals
  from inside. When that init exits, the kernel kills whatever the program left behind.
- fork bombs: RLIMIT_NPROC counts processes per real uid and is not enforced for root, so the program
  runs as a uid of its own (never reused by a concurrent run of this evaluator): the limit is then exact
  per candidate. The PID namespace guarantees the whole tree dies with its init.
- files: the private mount namespace sees the host's filesystem read-only (and nosuid); the only writable
  places are tmpfs mounts that vanish with the namespace, each capped in size. RLIMIT_FSIZE caps a file.
- memory and CPU: RLIMIT_AS per process, RLIMIT_CPU, and a wall-clock timeout after which the evaluator
  kills the whole process group (the namespace's init, and with it everything inside).
- output: stdout and stderr are pipes drained by the evaluator, which keeps only the first and last
  `max_output_bytes` of each, so a program printing gigabytes costs time, not memory.

What it cannot do: the program can read every world-readable file of the host; the memory bound is per
process (max_processes x memory_bytes in the worst case; no cgroup is used); a program may still pass by
calling os._exit(0) before the tests run (the scorer trusts the exit status, like the reference harness).

Without root or namespaces ("unavailable") nothing above holds except the rlimits, the timeout, the new
session and the temporary directory; the sandbox then refuses unless `allow_network=True`.

This file is also the bootstrap run inside the namespace (`python -I sandbox.py CONFIG`), so it imports
only the standard library.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Literal

log = logging.getLogger(__name__)

Isolation = Literal["auto", "namespace", "unavailable"]

UNSHARE_FLAGS = ("--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
# Exit statuses of the program process, set by `_run_program`.
EXIT_PASSED, EXIT_FAILED, EXIT_MEMORY = 0, 1, 3
# Each run gets its own uid from this range (see "fork bombs" above); well above any real account.
UID_BASE = 200_000
UIDS_PER_PROCESS = 4096

REFUSAL = (
    "Refusing to run untrusted code without isolation: {reason}. The sandbox needs root and Linux "
    "namespaces (util-linux `unshare --net --pid --mount`) to cut the network, keep writes out of the host "
    "filesystem and contain the process tree. Run as root on Linux, or pass allow_network=True "
    "(codeparrot-eval: --unsafe-allow-network) to run anyway: the programs can then open network "
    "connections, write wherever your user can, and signal or kill your other processes."
)


class SandboxUnavailable(RuntimeError):
    """Isolation is not available here and the caller did not accept running without it."""


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


@functools.lru_cache(maxsize=1)
def probe_isolation() -> str | None:
    """None when namespace isolation works here, else the reason it does not (tried once per process)."""
    if not sys.platform.startswith("linux"):
        return f"namespaces are Linux-only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "not running as root (namespaces and switching to an unprivileged uid need root)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux `unshare` is not on PATH"
    try:
        subprocess.run([unshare, *UNSHARE_FLAGS, "true"], capture_output=True, timeout=30, check=True)
    except subprocess.CalledProcessError as e:
        return f"`unshare {' '.join(UNSHARE_FLAGS)} true` failed: {e.stderr.decode(errors='replace').strip()}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare` could not run: {e}"
    return None


class Sandbox:
    """Runs programs one process tree each; thread-safe, so several runs may go on in parallel.

    network_isolation: "auto" probes the machine, "namespace" requires namespaces (raises if they do not
    work), "unavailable" behaves as on a machine without them (for tests of the refusal).
    allow_network: accept running without isolation when it is unavailable (see REFUSAL for the risk).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        allow_network: bool = False,
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
        if reason is not None and (network_isolation == "namespace" or not allow_network):
            raise SandboxUnavailable(REFUSAL.format(reason=reason))
        self.isolated = reason is None
        if not self.isolated:
            log.warning(
                "running untrusted programs WITHOUT isolation (%s): network and host files exposed", reason
            )
        self._runs = itertools.count()
        self._lock = threading.Lock()

    def _next_uid(self) -> int:
        with self._lock:
            i = next(self._runs)
        return UID_BASE + (os.getpid() % UIDS_PER_PROCESS) * UIDS_PER_PROCESS + i % UIDS_PER_PROCESS

    def run(self, program: str, *, timeout: float | None = None) -> Result:
        """Run `program` (Python source) to completion or until `timeout` (default: limits.timeout)."""
        timeout = self.limits.timeout if timeout is None else timeout
        root = tempfile.mkdtemp(prefix="codeparrot-sandbox-")
        try:
            return self._run_in(root, program, timeout)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _run_in(self, root: str, program: str, timeout: float) -> Result:
        work = os.path.join(root, "work")
        os.mkdir(work)
        source_path = os.path.join(root, "program.py")
        with open(source_path, "w", encoding="utf-8") as f:
            f.write(program)
        uid = self._next_uid() if self.isolated else None
        config = {
            "source": source_path,
            "work": work,  # isolated runs get a fresh one inside the namespace instead
            "uid": uid,
            "cpu_seconds": int(timeout) + 1,
            "limits": dataclasses.asdict(self.limits),
        }
        cmd = [sys.executable, "-I", "-B", os.path.abspath(__file__), json.dumps(config)]
        if self.isolated:
            cmd = [shutil.which("unshare") or "unshare", *UNSHARE_FLAGS, "--", *cmd]
            if setpriv := shutil.which("setpriv"):
                # If the evaluator dies mid-run, unshare dies too, and with it the namespace (--kill-child).
                cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=root,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,  # its own process group: killpg reaches the whole tree
        )
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
        for reader in readers:
            reader.join(timeout=5.0)  # a writer that escaped the group could hold the pipe open
        stdout, stderr = (reader.text() for reader in readers)
        verdict = "timed out" if timed_out else _verdict(returncode, stderr)
        return Result(verdict, None if timed_out else returncode, duration, stdout, stderr)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def _verdict(returncode: int, stderr: str) -> str:
    if returncode == EXIT_PASSED:
        return "passed"
    if returncode == EXIT_MEMORY:
        return "killed: memory"
    if returncode == EXIT_FAILED:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return f"failed: {lines[-1].strip()[:300]}" if lines else "failed: exit status 1"
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else None
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


# ----------------------------------------------------------------------------------------------------------
# Inside the sandbox: `python -I sandbox.py CONFIG`, PID 1 of the new namespaces when isolated.

MS_NOSUID, MS_NODEV, MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 1, 32, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, SYS_MOUNT_SETATTR = 1, 2, 0x8000, 442
PR_SET_NO_NEW_PRIVS = 38


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _confine_filesystem(uid: int, size: int) -> str:
    """Private propagation, every mount read-only and nosuid, private tmpfs on /tmp, /var/tmp and
    /dev/shm; returns the program's work directory, /tmp/work, owned by `uid`."""
    ctypes, libc = _libc()
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _expose_interpreter(libc)

    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(SYS_MOUNT_SETATTR, -100, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret != 0:  # kernels before 5.12: remount each mount point
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f]
        for point in points:
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
            libc.mount(None, point.encode(), None, flags, None)  # best effort: the uid switch backs it
    for shared in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(shared):
            options = f"size={size},nr_inodes=4096,mode=1777".encode()
            _check(libc.mount(b"tmpfs", shared.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), shared)
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    os.chown(work, uid, uid)
    return work


def _expose_interpreter(libc) -> None:
    """Let the unprivileged uid read the interpreter's library even when it lives in a private directory
    (pyenv under /root, mode 0700): that directory is hidden behind an empty tmpfs into which only the
    library directories are bind-mounted back. Everything else in it stays invisible to the program."""
    needed = {
        os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, *sys.path) if os.path.isdir(p)
    }
    needed = {p for p in needed if not any(p.startswith(q + "/") for q in needed)}
    hidden: dict[str, list[str]] = {}
    for path in sorted(needed):
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            ancestor = "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:  # not traversable by others
                hidden.setdefault(ancestor, []).append(path)
                break
    for ancestor, paths in hidden.items():
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths]  # keep them reachable once hidden
        opts = b"size=1m,mode=0755"
        _check(
            libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts),
            f"tmpfs on {ancestor}",
        )
        for path, fd in zip(paths, fds, strict=True):
            os.makedirs(path, exist_ok=True)
            _check(
                libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None), path
            )
            os.close(fd)


def _drop_privileges(uid: int) -> None:
    _, libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _set_limits(config: dict) -> None:
    import resource

    limits = config["limits"]
    cpu = config["cpu_seconds"]
    for name, value in (
        ("RLIMIT_CPU", (cpu, cpu + 1)),
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_FSIZE", limits["max_file_bytes"]),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_NOFILE", limits["max_open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _run_program(source: str, config: dict) -> None:
    """In the forked child: limit, drop privileges, run `source` as __main__, exit with its status."""
    status = EXIT_FAILED
    try:
        _set_limits(config)
        if config["uid"] is not None:
            _drop_privileges(config["uid"])
        work = config["work"]
        os.chdir(work)
        os.environ.clear()
        os.environ.update(HOME=work, TMPDIR=work, PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
        code = compile(source, "program.py", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        status = EXIT_PASSED
    except MemoryError:
        status = EXIT_MEMORY
        os.write(2, b"\nMemoryError\n")
    except BaseException:  # noqa: B036 - SystemExit and KeyboardInterrupt fail a candidate too
        try:
            traceback.print_exc()
        except BaseException:  # noqa: B036
            os.write(2, b"\nexception (traceback unavailable)\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: B036
            pass
    os._exit(status)


def _bootstrap(config: dict) -> int:
    with open(config["source"], encoding="utf-8") as f:
        source = f.read()
    if config["uid"] is not None:
        config["work"] = _confine_filesystem(config["uid"], config["limits"]["max_file_bytes"])
    child = os.fork()
    if child == 0:
        _run_program(source, config)
    # As the namespace's init, reap every orphan until the program itself ends; returning ends the
    # namespace and the kernel kills whatever is left.
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(_bootstrap(json.loads(sys.argv[1])))
