"""Simulated hosts on one machine: network namespaces joined by a veth pair, each with its own hostname,
/etc/hosts and sshd, so ssh, pdsh, the DeepSpeed runner and mpirun reach them like real hosts.

Each host is a holder process (`sleep infinity`) in new net, UTS and mount namespaces; commands join those
namespaces with nsenter and otherwise share the machine's filesystem and process table. The hosts are
reachable from each other only: their addresses live on the veth pair, with no default route, so no traffic
leaves the namespaces. Everything is torn down by SIGKILL of whatever runs in the namespaces, `ip netns
del` and removal of the work directory; leftovers of a runner that was itself killed are swept at the next
start (namespace and directory names carry the creating process id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

NETNS_PREFIX = "cpt"  # namespaces are named cpt<creator pid>-<host>
WORKDIR_PREFIX = "cpcluster-"  # work directories are /tmp/cpcluster-<creator pid>-*
# The hosts' interface on their subnet: not eth0, so what silently assumes eth0 (DeepSpeed's openmpi runner
# passes `--mca btl_tcp_if_include eth0` unless told otherwise) fails here as on many real clusters.
IFNAME = "cplink0"
SSHD = "/usr/sbin/sshd"  # sshd refuses to start unless called by its absolute path
BINARIES = ("ip", "unshare", "nsenter", SSHD, "ssh", "ssh-keygen", "pdsh")
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, not /usr/bin


@dataclasses.dataclass
class Hosts:
    """The running hosts. `popen`/`run` start commands on a host; `env()` is the environment to give them."""

    names: list[str]
    addrs: dict[str, str]
    subnet: str
    bin_dir: Path  # holds the `ssh` wrapper: put it first on PATH
    work_dir: Path  # keys, configs and logs; removed at teardown
    ifname: str  # each host's interface on `subnet`
    holders: dict[str, int]  # host -> pid of the process holding its namespaces
    netns: dict[str, str]  # host -> `ip netns` name

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment with the ssh wrapper and the venv first on PATH, one OpenMP thread."""
        path = os.pathsep.join([str(self.bin_dir), str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")])
        return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", **extra}

    def enter(self, host: str, cwd: str | Path | None = None) -> list[str]:
        """The argv prefix that runs a command in `host`'s namespaces, in `cwd` (default: this process's).
        Joining a mount namespace resets the working directory to /, hence --wd."""
        if host not in self.holders:
            raise KeyError(f"unknown host {host!r}; the hosts are {', '.join(self.names)}")
        wd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        return ["nsenter", "-t", str(self.holders[host]), "--net", "--uts", "--mount", f"--wd={wd}", "--"]

    def popen(self, host: str, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv on `host` in its own session (signal the group with os.killpg(p.pid, sig)); the
        environment defaults to env(). nsenter execs argv, so p.pid is argv's own pid."""
        popen_kwargs.setdefault("env", self.env())
        popen_kwargs.setdefault("start_new_session", True)
        cwd = popen_kwargs.get("cwd")
        return subprocess.Popen([*self.enter(host, cwd), *argv], **popen_kwargs)

    def run(self, host: str, argv: Sequence[str], timeout: float, **kw) -> subprocess.CompletedProcess:
        """Run argv on `host` to completion, output captured as text. On timeout the whole process group is
        killed (not only argv itself) before TimeoutExpired is raised."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        proc = self.popen(host, argv, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def pids(self, pattern: str) -> list[int]:
        """Pids of live processes, in any namespace, whose command line contains `pattern` (this process
        excluded)."""
        return [pid for pid, cmdline in _processes() if pattern in cmdline and pid != os.getpid()]

    def write_hostfile(self, path: str | Path, slots: int = 1, hosts: Sequence[str] | None = None) -> Path:
        """A DeepSpeed hostfile naming `hosts` (default: all) with `slots` each."""
        path = Path(path)
        path.write_text("".join(f"{h} slots={slots}\n" for h in (hosts or self.names)))
        return path

    def deepspeed_env_file(self, path: str | Path, **variables: str) -> Path:
        """A `.deepspeed_env` for remote ranks (pass its absolute path as DS_ENV_FILE): PATH and
        OMP_NUM_THREADS of env(), then `variables`. The runner forwards only PYTHON*, UCX*, MV2* and
        MLFLOW* variables by itself, and splits every line at its first '=', so no blank lines."""
        base = self.env()
        values = {"PATH": base["PATH"], "OMP_NUM_THREADS": base["OMP_NUM_THREADS"], **variables}
        bad = [k for k, v in values.items() if "\n" in v or not re.fullmatch(r"[A-Za-z_]\w*", k)]
        if bad:
            raise ValueError(
                f"cannot write {', '.join(bad)} to {path}: names must be identifiers, one line each"
            )
        path = Path(path)
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return path


@contextlib.contextmanager
def start_hosts(
    names: Sequence[str] = ("cpnode1", "cpnode2"), subnet_prefix: str = "10.77.0"
) -> Iterator[Hosts]:
    """Two hosts up with sshd; everything removed on exit, also when starting fails half-way."""
    if len(names) != 2:
        raise ValueError(f"a veth pair joins exactly two hosts, got {list(names)}")
    sweep_stale()
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        work.chmod(0o755)  # daemons running as other users (munge) need to reach their files inside
        children: list[subprocess.Popen] = []  # reaped once their namespaces are emptied
        stack.callback(_reap, children)
        addrs = {name: f"{subnet_prefix}.{i + 1}" for i, name in enumerate(names)}
        netns = {name: f"{NETNS_PREFIX}{os.getpid()}-{name}" for name in names}
        for name in names:
            _sh("ip", "netns", "add", netns[name])
            stack.callback(remove_netns, netns[name])
        a, b = (netns[n] for n in names)
        _sh("ip", "-n", a, "link", "add", IFNAME, "type", "veth", "peer", "name", IFNAME, "netns", b)
        for name in names:
            _sh("ip", "-n", netns[name], "link", "set", "lo", "up")
            _sh("ip", "-n", netns[name], "addr", "add", f"{addrs[name]}/24", "dev", IFNAME)
            _sh("ip", "-n", netns[name], "link", "set", IFNAME, "up")
        (work / "hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{addrs[n]}\t{n}\n" for n in names)
        )
        holders = {name: _start_holder(children, netns[name], name, work) for name in names}
        bin_dir = _ssh_setup(work)
        hosts = Hosts(
            names=list(names),
            addrs=addrs,
            subnet=f"{subnet_prefix}.0/24",
            bin_dir=bin_dir,
            work_dir=work,
            ifname=IFNAME,
            holders=holders,
            netns=netns,
        )
        for name in names:
            children.append(_start_sshd(hosts, name))
        _wait_ssh(hosts)
        yield hosts


def _start_holder(children: list[subprocess.Popen], netns: str, hostname: str, work: Path) -> int:
    """Joins the network namespace and adds a UTS namespace (own hostname) and a mount namespace that still
    receives the machine's later mounts (slave propagation: a tmpfs a test mounts under /tmp is seen by
    every host) while its own mounts stay inside: /etc/hosts, and a /sys of this network namespace (so
    /sys/class/net lists its interfaces) with the machine's cgroup tree moved over (slurmd needs it)."""
    cgroup = work / f"cgroup.{hostname}"
    cgroup.mkdir()
    script = (
        'set -e; hostname "$1"; mount --bind "$2" /etc/hosts; mount --rbind /sys/fs/cgroup "$3";'
        'mount -t sysfs sysfs /sys; mount --move "$3" /sys/fs/cgroup; echo $$; exec sleep infinity'
    )
    enter = ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--uts", "--mount", "--propagation=slave"]
    argv = [*enter, "sh", "-c", script, "sh", hostname, str(work / "hosts"), str(cgroup)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    children.append(proc)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"could not create the namespaces of {hostname} (exit {proc.wait()})")
    return int(line)


def _ssh_setup(work: Path) -> Path:
    """A client key, a host key shared by the hosts, and the `ssh` wrapper that uses them."""
    for key in ("id_ed25519", "ssh_host_ed25519_key"):
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cpcluster", "-f", str(work / key))
    (work / "authorized_keys").write_text((work / "id_ed25519.pub").read_text())
    (work / "ssh_config").write_text(
        "Host *\n"
        "  User root\n"
        f"  IdentityFile {work}/id_ed25519\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  LogLevel ERROR\n"
    )
    bin_dir = work / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {work}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


def _start_sshd(hosts: Hosts, name: str) -> subprocess.Popen:
    work = hosts.work_dir
    config = work / f"sshd_config.{name}"
    config.write_text(
        f"ListenAddress {hosts.addrs[name]}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {work}/ssh_host_ed25519_key\n"
        f"AuthorizedKeysFile {work}/authorized_keys\n"
        f"PidFile {work}/sshd.{name}.pid\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # the keys live under /tmp, which StrictModes rejects (world-writable parent)
        "StrictModes no\n"
        "PrintMotd no\n"
        # pdsh and the preflight open one connection per host at once; the defaults throttle at 10
        "MaxStartups 200\n"
        "MaxSessions 100\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    with open(work / f"sshd.{name}.log", "wb") as log:
        return hosts.popen(name, [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)


def _wait_ssh(hosts: Hosts, timeout: float = 15) -> None:
    """Until every host reaches every host over ssh by name."""
    deadline = time.monotonic() + timeout
    for src in hosts.names:
        for dst in hosts.names:
            while True:
                r = hosts.run(src, ["ssh", dst, "hostname"], timeout=timeout)
                if r.returncode == 0 and r.stdout.strip() == dst:
                    break
                if time.monotonic() > deadline:
                    logs = "".join((hosts.work_dir / f"sshd.{n}.log").read_text() for n in hosts.names)
                    raise RuntimeError(f"ssh {src} -> {dst} failed: {r.stdout}{r.stderr}\nsshd logs:\n{logs}")
                time.sleep(0.1)


def remove_netns(name: str) -> None:
    """SIGKILL everything in network namespace `name` (until nothing is left), then delete it."""
    for _ in range(100):
        pids = _netns_pids(name)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def sweep_stale() -> None:
    """Remove namespaces and work directories whose creating process is gone (a runner killed with
    SIGKILL runs no teardown). Those of live processes, such as another test run, are left alone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({NETNS_PREFIX}(\d+)-\S+)", listing, flags=re.M):
        if not _alive(int(name[1])):
            remove_netns(name[0])
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        m = re.match(rf"{WORKDIR_PREFIX}(\d+)-", path.name)
        if m and not _alive(int(m[1])):
            shutil.rmtree(path, ignore_errors=True)


def _reap(children: list[subprocess.Popen]) -> None:
    for proc in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes() -> Iterator[tuple[int, str]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(entry.path, "cmdline").read_bytes()
            except OSError:  # exited meanwhile
                continue
            if raw:  # zombies and kernel threads have none
                yield int(entry.name), raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _sh(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed (exit {r.returncode}): {r.stderr.strip()}")
