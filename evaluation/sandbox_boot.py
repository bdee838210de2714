"""The inside of a sandbox run: `python -I -B sandbox_boot.py CONFIG`, started by `evaluation.sandbox`.

It runs as PID 1 of the new PID namespace when isolated ("root": real root; "user": root of a user
namespace owned by the unprivileged evaluator), confines the filesystem, then forks the program process,
which sets its limits, gives up its privileges and runs the program's source. Unisolated ("none") it only
forks the program, which still sets its limits and, when started by root, switches to its own uid.

It reports to the evaluator on a pipe the program never holds (fd `status_fd`): one JSON object, either
`{"refused": why}` when confinement failed (nothing was run) or `{"exit": code, "finished": bool}`,
finished meaning the program's source ran to its last statement (see `_run_program`). Only the standard
library is imported: in a user namespace nothing else need be readable.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import traceback

# Exit statuses of the program process, set by `_run_program`.
EXIT_PASSED, EXIT_FAILED, EXIT_MEMORY = 0, 1, 3

MS_NOSUID, MS_NODEV, MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 1, 32, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, SYS_MOUNT_SETATTR = 1, 2, 0x8000, 442
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT = 38, 24, 28, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, NO_CAP_AMBIENT_RAISE, each with its lock: uid 0 of the user
# namespace never regains capabilities, not even by exec().
SECURE_BITS_LOCKED = 0xFF
PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _confine_filesystem(config: dict) -> str:
    """Private propagation, private user directories hidden, every mount read-only and nosuid (checked:
    a mount left writable refuses the run), then private tmpfs on /tmp, /var/tmp and /dev/shm. Returns the
    program's work directory, /tmp/work, owned by the program's uid."""
    ctypes, libc = _libc()
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _hide_private_directories(libc, config.get("hide", []))
    if config["mode"] == "user":
        # Per user namespace: the program may create no user namespace of its own (defence in depth; its
        # mounts would stay read-only there anyway). Written before /proc becomes read-only.
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    _make_host_read_only(ctypes, libc)
    size = config["limits"]["max_file_bytes"]
    for shared in PRIVATE_TMPFS:
        if os.path.isdir(shared):
            options = f"size={size},nr_inodes=4096,mode=1777".encode()
            _check(libc.mount(b"tmpfs", shared.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), shared)
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    os.chown(work, config["uid"], config["uid"])
    return work


def _mount_points() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount this namespace sees."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        fields = [line.split() for line in f]
    return [(f[4].encode().decode("unicode_escape"), set(f[5].split(","))) for f in fields]


def _make_host_read_only(ctypes, libc) -> None:
    """Every mount read-only and nosuid: mount_setattr on the whole tree (Linux 5.12+), else a remount of
    each mount point. Then checked mount by mount: raises naming any mount still writable."""

    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(SYS_MOUNT_SETATTR, -100, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret != 0:
        for point, _ in _mount_points():
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
            _check(libc.mount(None, point.encode(), None, flags, None), f"remount {point} read-only")
    writable = [point for point, options in _mount_points() if "ro" not in options]
    if writable:
        raise OSError(f"mounts still writable after the read-only remount: {', '.join(writable)}")


def _hide_private_directories(libc, hide: list[str]) -> None:
    """Cover with an empty tmpfs each directory of `hide` (the evaluator's home) and each directory others
    cannot traverse, bind-mounting back into it only the interpreter's library directories: the program
    can import the standard library even from a private pyenv, and sees nothing else there."""
    needed = {
        os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, *sys.path) if os.path.isdir(p)
    }
    needed = {p for p in needed if not any(p.startswith(q + "/") for q in needed)}
    covered: dict[str, list[str]] = {os.path.realpath(h): [] for h in hide if os.path.isdir(h)}
    covered.pop("/", None)
    for path in sorted(needed):
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            ancestor = "/".join(parts[:i])
            if ancestor in covered or not os.stat(ancestor).st_mode & 0o001:  # not traversable by others
                covered.setdefault(ancestor, []).append(path)
                break
    for ancestor, paths in covered.items():
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths]  # keep them reachable once covered
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


def _switch_uid(uid: int) -> None:
    """Become `uid` (real, effective and saved), without groups and without a way back."""
    _, libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _drop_capabilities() -> None:
    """In a user namespace the program stays its uid 0 (the only one mapped) but holds no capability:
    empty bounding, ambient, effective, permitted and inheritable sets, locked secure bits, no_new_privs.
    Checked: raises if any capability is left."""
    ctypes, libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_SECUREBITS, SECURE_BITS_LOCKED, 0, 0, 0), "secure bits")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    _check(libc.capset(header, data), "capset")
    with open("/proc/self/status", encoding="ascii") as f:
        caps = [line for line in f if line.startswith(("CapEff", "CapPrm", "CapBnd", "CapAmb"))]
    if any(int(line.split()[1], 16) for line in caps):
        raise OSError(f"capabilities left after dropping them: {' '.join(caps)}")


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


def _give_up_privileges(config: dict) -> None:
    if config["mode"] == "user":
        _drop_capabilities()
    elif config["uid"] is not None:
        _switch_uid(config["uid"])


def _run_program(source: str, config: dict, done_fd: int, nonce: bytes) -> None:
    """In the forked child: limit, give up privileges, run `source` as __main__, exit with its status.
    Only when the source ran to its end is `nonce` written on `done_fd` (an exit before it, even
    with status 0, is no pass)."""
    status = EXIT_FAILED
    try:
        work = config["work"]
        os.chdir(work)
        _set_limits(config)
        _give_up_privileges(config)
        os.environ.clear()
        os.environ.update(HOME=work, TMPDIR=work, PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
        code = compile(source, "program.py", "exec")
        del source
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        os.write(done_fd, nonce)
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


def _reap(child: int) -> int:
    """As the namespace's init, reap every orphan until the program itself ends; its exit code (128 + N
    for signal N). Returning ends the namespace and the kernel kills whatever is left."""
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _read_available(fd: int) -> bytes:
    """What the pipe holds now, without waiting for writers (an orphan of the program may keep it open)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except BlockingIOError:
        pass
    return data


def bootstrap(config: dict) -> int:
    """Confine (when isolated), run the program in a child, report on `status_fd`; the exit status."""
    status_fd = config["status_fd"]
    report = lambda obj: os.write(status_fd, json.dumps(obj).encode())  # noqa: E731
    with open(config["source"], encoding="utf-8") as f:
        source = f.read()
    if config["mode"] != "none":
        try:
            config["work"] = _confine_filesystem(config)
        except OSError as e:
            report({"refused": str(e)})
            return 1
    done_r, done_w = os.pipe()
    nonce = secrets.token_hex(16).encode()
    child = os.fork()
    if child == 0:
        os.close(status_fd)
        os.close(done_r)
        _run_program(source, config, done_w, nonce)
    os.close(done_w)
    code = _reap(child)
    report({"exit": code, "finished": nonce in _read_available(done_r)})
    return 0


if __name__ == "__main__":
    sys.exit(bootstrap(json.loads(sys.argv[1])))
