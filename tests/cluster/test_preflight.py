"""`python -m launch.preflight` against the simulated hosts, run from the first host as a user would."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.hosts import Hosts

ROOT = Path(__file__).resolve().parents[2]


def preflight(
    hosts: Hosts, hostfile: Path, save_dir: Path, *args: str, **env: str
) -> subprocess.CompletedProcess:
    argv = [
        sys.executable,
        "-m",
        "launch.preflight",
        "--hostfile",
        str(hostfile),
        "--save-dir",
        str(save_dir),
    ]
    return hosts.run(hosts.names[0], [*argv, *args], timeout=60, cwd=ROOT, env=hosts.env(**env))


def cells(out: str, host: str) -> list[str]:
    """The row of `host` in the table, split at runs of two or more spaces."""
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines()]
    return next(row[1:] for row in rows if row[0] == host)


@pytest.fixture
def hostfile(hosts: Hosts, tmp_path: Path) -> Path:
    return hosts.write_hostfile(tmp_path / "hostfile")


@pytest.fixture
def gloo_env(hosts: Hosts, tmp_path: Path) -> dict[str, str]:
    """DS_ENV_FILE naming the shared interface, as a multi-host run should have it."""
    env_file = hosts.deepspeed_env_file(tmp_path / "ds_env", GLOO_SOCKET_IFNAME=hosts.ifname)
    return {"DS_ENV_FILE": str(env_file)}


@pytest.fixture
def private_mount(hosts: Hosts, tmp_path: Path) -> Iterator[Path]:
    """A directory with an empty tmpfs over it in the last host's mount namespace only."""
    path = tmp_path / "private"
    path.mkdir()
    host = hosts.names[-1]
    r = hosts.run(host, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], timeout=10)
    assert r.returncode == 0, r.stderr
    yield path
    hosts.run(host, ["umount", "-l", str(path)], timeout=10)


@contextlib.contextmanager
def bind_mounted(hosts: Hosts, host: str, source: Path, target: Path) -> Iterator[None]:
    """`source` seen at `target` on `host` only (its own mount namespace); unmounted on exit."""
    r = hosts.run(host, ["mount", "--bind", str(source), str(target)], timeout=10)
    assert r.returncode == 0, r.stderr
    try:
        yield
    finally:
        hosts.run(host, ["umount", str(target)], timeout=10)


def problem_lines(out: str) -> list[str]:
    """The report's `host / check: what was found` lines (each followed by its `  fix:` line)."""
    return [line for line in out.splitlines() if re.match(r"\S+ / [\w -]+: ", line)]


def launching_host_versions() -> tuple[str, str, str]:
    """Python, torch and deepspeed as the preflight's own interpreter reports them."""
    python = ".".join(map(str, sys.version_info[:3]))
    return python, importlib.metadata.version("torch"), importlib.metadata.version("deepspeed")


def test_another_interpreter_at_the_same_path_on_one_host(
    hosts: Hosts, hostfile: Path, tmp_path: Path, gloo_env: dict[str, str]
) -> None:
    """On the second host the runner's interpreter path (sys.executable, in the bin directory on every
    host's PATH) is Debian's own python3: one line names the host and both Python versions, exit 1. (It
    still reads the venv's pyvenv.cfg, so it finds the same torch and deepspeed; the next test changes
    those.)"""
    other = Path("/usr/bin/python3")
    found = subprocess.run([str(other), "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
                           capture_output=True, text=True)  # fmt: skip
    python, torch, deepspeed = launching_host_versions()
    assert found.returncode == 0 and found.stdout.strip() != python, "needs a second interpreter"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / Path(sys.executable).name).symlink_to(other)
    first, second = hosts.names
    with bind_mounted(hosts, second, fake_bin, Path(sys.executable).parent):
        r = preflight(hosts, hostfile, tmp_path / "ckpt", **gloo_env)
    assert r.returncode == 1, r.stdout + r.stderr
    there = found.stdout.strip()
    assert problem_lines(r.stdout) == [
        f"{second} / python: Python {there} on {second}, {python} on the launching host ({sys.executable})"
    ], r.stdout
    assert cells(r.stdout, second)[:5] == ["OK", f"FAIL {there}", "OK", "OK", "OK"], r.stdout
    assert set(cells(r.stdout, first)) <= {"OK", "-"}, r.stdout


def test_another_deepspeed_version_on_one_host(
    hosts: Hosts, hostfile: Path, tmp_path: Path, gloo_env: dict[str, str]
) -> None:
    """Same interpreter, but the second host's deepspeed reports 0.18.0 (its installed metadata replaced
    there only): one line naming the host and both versions, the others agree, exit 1."""
    _, _, deepspeed = launching_host_versions()
    metadata = Path(importlib.metadata.distribution("deepspeed")._path) / "METADATA"
    other = tmp_path / "METADATA"
    other.write_text(re.sub(r"^Version: .*$", "Version: 0.18.0", metadata.read_text(), count=1, flags=re.M))
    second = hosts.names[1]
    with bind_mounted(hosts, second, other, metadata):
        r = preflight(hosts, hostfile, tmp_path / "ckpt", **gloo_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert problem_lines(r.stdout) == [
        f"{second} / deepspeed: deepspeed 0.18.0 on {second}, {deepspeed} on the launching host "
        f"({sys.executable})"
    ], r.stdout
    assert cells(r.stdout, second)[:4] == ["OK", "OK", "OK", "FAIL 0.18.0"], r.stdout
    assert r.stdout.rstrip().endswith("1 check failed.")


def test_all_ok(hosts: Hosts, hostfile: Path, tmp_path: Path, gloo_env: dict[str, str]) -> None:
    start = time.monotonic()
    r = preflight(hosts, hostfile, tmp_path / "ckpt", **gloo_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - start < 20
    for host in hosts.names:
        assert set(cells(r.stdout, host)) <= {"OK", "-"}, r.stdout
    assert cells(r.stdout, hosts.names[0])[5] == "OK"  # the master port is checked on the first host
    assert r.stdout.rstrip().endswith("All checks passed.")
    assert list((tmp_path / "ckpt").iterdir()) == []  # its marker files are gone


def test_unset_interface_is_a_warning(hosts: Hosts, hostfile: Path, tmp_path: Path) -> None:
    r = preflight(hosts, hostfile, tmp_path / "ckpt")
    assert r.returncode == 0, r.stdout + r.stderr
    for host in hosts.names:
        assert cells(r.stdout, host)[-1] == "WARN unset"
        assert (
            f"fix: set GLOO_SOCKET_IFNAME (CPU) or NCCL_SOCKET_IFNAME (GPU) in .deepspeed_env; "
            f"on {host}: {hosts.ifname} ({hosts.addrs[host]})"
        ) in r.stdout


def test_unreachable_host(hosts: Hosts, tmp_path: Path, gloo_env: dict[str, str]) -> None:
    hostfile = hosts.write_hostfile(tmp_path / "hostfile", hosts=[*hosts.names, "cpnode9"])
    r = preflight(hosts, hostfile, tmp_path / "ckpt", **gloo_env)
    assert r.returncode == 1
    assert cells(r.stdout, "cpnode9")[0] == "FAIL unreachable"
    assert "cpnode9 / ssh: `ssh cpnode9` failed: ssh: Could not resolve hostname cpnode9" in r.stdout
    assert (
        "fix: make `ssh cpnode9 true` work from this host without a password: the host up, sshd running, "
        "cpnode9 resolvable, this user's key in its authorized_keys (or drop cpnode9 from the hostfile)"
    ) in r.stdout
    for host in hosts.names:  # the others are still checked
        assert set(cells(r.stdout, host)) <= {"OK", "-"}, r.stdout
    assert r.stdout.rstrip().endswith("1 check failed.")


def test_save_dir_not_shared(
    hosts: Hosts, hostfile: Path, private_mount: Path, gloo_env: dict[str, str]
) -> None:
    r = preflight(hosts, hostfile, private_mount, **gloo_env)
    assert r.returncode == 1
    first, last = hosts.names
    assert cells(r.stdout, last)[6] == "FAIL not shared"
    assert (
        f"{last} / save dir: {private_mount} on {last}: the file the launching host wrote is not there; "
        f"the file {last} wrote is not seen by the launching host; the files of {first} are not there\n"
        "  fix: put --save-dir on a filesystem that every host mounts at the same path (NFS, Lustre, ...): "
        "the ranks of all hosts save one checkpoint into it"
    ) in r.stdout
    assert f"{first} / save dir: {private_mount} on {first}: the files of {last} are not there" in r.stdout
    assert hosts.run(last, ["ls", "-A", str(private_mount)], timeout=10).stdout == ""  # markers removed there


def test_save_dir_missing_on_a_host(
    hosts: Hosts, hostfile: Path, private_mount: Path, gloo_env: dict[str, str]
) -> None:
    save_dir = private_mount / "ckpt"  # created by the preflight where the launching host sees it
    r = preflight(hosts, hostfile, save_dir, **gloo_env)
    assert r.returncode == 1
    last = hosts.names[-1]
    assert cells(r.stdout, last)[6] == "FAIL missing"
    assert (
        f"{last} / save dir: {save_dir} on {last} does not exist (it does on the launching host)" in r.stdout
    )


def test_busy_master_port(hosts: Hosts, hostfile: Path, tmp_path: Path, gloo_env: dict[str, str]) -> None:
    port, master = "29511", hosts.names[0]
    listen = f"import socket, time; s = socket.create_server(('', {port})); print('up', flush=True); "
    listen += "time.sleep(60)"
    server = hosts.popen(master, [sys.executable, "-c", listen], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "up\n"
        r = preflight(hosts, hostfile, tmp_path / "ckpt", "--master-port", port, **gloo_env)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 1
    assert cells(r.stdout, master)[5] == "FAIL in use"
    assert (
        f"{master} / master port: port {port} on {master}: in use\n"
        f"  fix: pick another --master_port (each job on a host needs its own), or stop what listens there "
        f"(`ss -ltnp 'sport = :{port}'` on {master} names it)"
    ) in r.stdout


def test_master_addr_must_be_the_first_host(
    hosts: Hosts, hostfile: Path, tmp_path: Path, gloo_env: dict[str, str]
) -> None:
    first, second = hosts.names
    ok = preflight(hosts, hostfile, tmp_path / "ckpt", "--master-addr", hosts.addrs[first], **gloo_env)
    assert ok.returncode == 0, ok.stdout
    r = preflight(hosts, hostfile, tmp_path / "ckpt", "--master-addr", second, **gloo_env)
    assert r.returncode == 1
    assert (
        f"{first} / master port: --master-addr {second} is not {first}, the first host, "
        "where rank 0 listens\n"
        f"  fix: pass --master_addr {first} (or one of its addresses: 127.0.0.1, {hosts.addrs[first]}), "
        "or list its host first"
    ) in r.stdout


def test_interfaces(hosts: Hosts, hostfile: Path, tmp_path: Path) -> None:
    """A missing interface fails; under openmpi DeepSpeed's default btl_tcp_if_include (eth0) is checked."""
    first = hosts.names[0]
    r = preflight(hosts, hostfile, tmp_path / "ckpt", GLOO_SOCKET_IFNAME="eth9")
    assert r.returncode == 1
    assert cells(r.stdout, first)[-1] == "FAIL no interface eth9"
    assert (
        f"{first} / interfaces: GLOO_SOCKET_IFNAME=eth9 (environment): no interface eth9 with an IPv4 "
        f"address on {first} (it has: lo 127.0.0.1, {hosts.ifname} {hosts.addrs[first]})"
    ) in r.stdout
    r = preflight(hosts, hostfile, tmp_path / "ckpt", GLOO_SOCKET_IFNAME=hosts.ifname)
    assert r.returncode == 0, r.stdout
    assert cells(r.stdout, first)[-1] == "WARN not passed on"
    assert f"fix: add GLOO_SOCKET_IFNAME={hosts.ifname} to .deepspeed_env" in r.stdout
    r = preflight(hosts, hostfile, tmp_path / "ckpt", "--launcher", "openmpi")
    assert r.returncode == 1
    assert "btl_tcp_if_include=eth0 (DeepSpeed's default without it in --launcher_args)" in r.stdout
    include = f"--mca btl_tcp_if_include {hosts.subnet} --mca oob_tcp_if_include {hosts.ifname}"
    r = preflight(hosts, hostfile, tmp_path / "ckpt", "--launcher", "openmpi", "--launcher-args", include)
    assert r.returncode == 0, r.stdout
    assert cells(r.stdout, first)[-1] == "OK"
