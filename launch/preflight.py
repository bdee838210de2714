"""Checks every host of a multi-host launch in seconds, before any rank starts.

    codeparrot-preflight --hostfile hosts --save-dir /shared/ckpt \\
        [--master-addr A] [--master-port P] [--launcher pdsh|openmpi] [--launcher-args "--mca ..."]

For each host of the hostfile (which is checked first, as DeepSpeed's runner reads it):
    ssh          `ssh -o BatchMode=yes` works (no password prompt) within --ssh-timeout seconds
    python, torch, deepspeed, codeparrot-ds
                 the versions of the launching host, with this interpreter's path (the runner starts every
                 remote rank with it)
    master port  free on the master host: the first host, where rank 0 listens. Without --master-port, the
                 port is chosen by the rule codeparrot-launch follows (launch/ports.py) and printed, to be
                 passed on as --master_port (launch/multi_node.sh chooses it once and passes it to both)
    save dir     writable, and one directory seen by all: a file the launching host writes there is read on
                 every host, and each host's file by the launching host and every other host
    interfaces   GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME (from the environment or .deepspeed_env) and, for
                 openmpi, btl/oob_tcp_if_include name an interface (or subnet) with an IPv4 address on each
                 host; unset on several hosts is a warning
The table shows OK or the problem per host and check, then what to do about each. Exit status: 0 when
nothing failed (warnings allowed), 1 when a check failed, 2 when the hostfile itself is wrong (the
convention of every console script, cmdline/).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from cmdline.args import OneLineParser
from cmdline.logs import setup_logging
from launch import probe
from launch.hostfile import HostfileError, read_hostfile
from launch.interfaces import Setting, interface_settings, unmatched

logger = logging.getLogger(__name__)

PROBE_SOURCE = Path(probe.__file__).read_text()
COLUMNS = ("ssh", "python", *probe.PACKAGES, "master port", "save dir", "interfaces")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreflightConfig:
    hostfile: Path
    save_dir: Path
    master_addr: str | None = None  # default: the first host
    master_port: int | None = None  # None: chosen as codeparrot-launch chooses it (launch/ports.py)
    launcher: Literal["pdsh", "openmpi"] = "pdsh"
    launcher_args: str = ""  # the runner's --launcher_args (for openmpi: --mca btl_tcp_if_include ...)
    ssh_port: int | None = None
    ssh_timeout: int = 5  # seconds to connect
    python: str = sys.executable  # what the runner starts on every host


@dataclasses.dataclass(frozen=True)
class Cell:
    status: Literal["OK", "FAIL", "WARN", "-"]
    summary: str = ""  # a few words for the table
    detail: str = ""  # what was found, with the values
    fix: str = ""

    @property
    def text(self) -> str:
        if self.status == "OK":
            return self.summary or "OK"
        return self.status if self.status == "-" else f"{self.status} {self.summary}"


SKIP = Cell("-")


@dataclasses.dataclass
class Report:
    rows: dict[str, dict[str, Cell]]  # row label -> column -> cell
    notes: list[str] = dataclasses.field(default_factory=list)  # printed after the table

    @property
    def failed(self) -> list[tuple[str, str, Cell]]:
        return [
            (r, c, cell) for r, row in self.rows.items() for c, cell in row.items() if cell.status == "FAIL"
        ]

    @property
    def ok(self) -> bool:
        return not self.failed

    def render(self) -> str:
        header = ["host", *COLUMNS]
        table = [header] + [
            [label, *(row.get(c, SKIP).text for c in COLUMNS)] for label, row in self.rows.items()
        ]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in table]
        for label, row in self.rows.items():
            for column, cell in row.items():
                if cell.status in ("FAIL", "WARN"):
                    lines += ["", f"{label} / {column}: {cell.detail}", f"  fix: {cell.fix}"]
        lines += ["", *self.notes] if self.notes else []
        count = len(self.failed)
        lines += ["", f"{count} check{'s' if count > 1 else ''} failed." if count else "All checks passed."]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Unreachable:
    column: Literal["ssh", "python"]
    detail: str


def preflight(cfg: PreflightConfig, environ: Mapping[str, str] | None = None) -> Report:
    """Run every check; HostfileError when the hostfile itself is wrong."""
    environ = os.environ if environ is None else environ
    hosts = read_hostfile(cfg.hostfile).hosts
    cfg, notes = _with_master_port(cfg, hosts)
    token = secrets.token_hex(6)
    first: dict[str, dict | Unreachable] = {}
    seen_here: dict[str, bool] = {}
    request = {"save_dir": str(cfg.save_dir), "token": token, "port": cfg.master_port}
    here, here_problem = _launcher_facts(cfg, request)
    try:
        first = _on_all(cfg, hosts, lambda h: {**request, "phase": "write", "me": h, "others": []})
        wrote = [h for h in hosts if isinstance(first[h], dict) and first[h]["save_dir"]["problem"] is None]
        seen_here = {h: probe.seen(str(cfg.save_dir), token, h) for h in wrote}
        second = _on_all(
            cfg,
            wrote,
            lambda h: {**request, "phase": "read", "me": h, "others": [o for o in wrote if o != h]},
        )
    finally:
        for name in ["launcher", *hosts]:
            Path(probe.marker(str(cfg.save_dir), token, name)).unlink(missing_ok=True)
        # markers in directories the launching host does not see are removed where they are
        for h in [h for h in hosts if isinstance(first.get(h), dict) and not seen_here.get(h, True)]:
            rm = f"rm -f {shlex.quote(probe.marker(str(cfg.save_dir), token, h))}"
            subprocess.run(_ssh(cfg, h, rm), capture_output=True, timeout=cfg.ssh_timeout + 10)
    label = f"{socket.gethostname()} (launching)"
    rows = {label: _launcher_row(here, here_problem, cfg)}
    ifaces = interface_settings(environ, cfg.launcher, cfg.launcher_args)
    for h in hosts:
        rows[h] = _host_row(cfg, h, hosts, here, first[h], second.get(h), seen_here.get(h), ifaces)
    return Report(rows, notes)


def _with_master_port(cfg: PreflightConfig, hosts: list[str]) -> tuple[PreflightConfig, list[str]]:
    """The config with its master port: the given one, else the one launch/ports.py chooses on the first
    host (the port codeparrot-launch would choose), with a note saying to pass it on."""
    from launch.ports import PortError, choose_master_port, free_port

    if cfg.master_port is not None:
        return cfg, []
    first = None if hosts[0] in ("localhost", "127.0.0.1") else hosts[0]
    try:
        port = choose_master_port(first, cfg.ssh_port, cfg.python)
    except PortError:
        return dataclasses.replace(cfg, master_port=free_port()), []  # the ssh column says why
    note = f"master port {port}: free on {hosts[0]} now; launch with --master_port {port}"
    return dataclasses.replace(cfg, master_port=port), [note]


def _launcher_facts(cfg: PreflightConfig, request: dict) -> tuple[dict, str | None]:
    """This host's versions, and its marker in the save dir (created if missing, as training would)."""
    problem = None
    try:
        cfg.save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = f"cannot create it: {e.strerror}"
    facts = probe.answer({**request, "phase": "write", "me": "launcher"})
    return facts, problem or facts["save_dir"]["problem"]


def _on_all(cfg: PreflightConfig, hosts: Sequence[str], request) -> dict[str, dict | Unreachable]:
    if not hosts:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return dict(zip(hosts, pool.map(lambda h: _remote(cfg, h, request(h)), hosts), strict=True))


def _remote(cfg: PreflightConfig, host: str, request: dict) -> dict | Unreachable:
    """The probe's answer from `host`, or why there is none."""
    argv = _ssh(cfg, host, f"{shlex.quote(cfg.python)} - {shlex.quote(json.dumps(request))}")
    timeout = cfg.ssh_timeout + 60
    try:
        r = subprocess.run(argv, input=PROBE_SOURCE, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Unreachable("ssh", f"no answer from `ssh {host}` within {timeout} s")
    said = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    if r.returncode == 255:  # ssh's own failures
        return Unreachable("ssh", f"`ssh {host}` failed: {said}")
    if r.returncode == 127:
        return Unreachable("python", f"{cfg.python} is not there on {host}: {said}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Unreachable("python", f"{cfg.python} on {host} could not run the probe: {said}")


def _ssh(cfg: PreflightConfig, host: str, command: str) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={cfg.ssh_timeout}"]
    argv += ["-p", str(cfg.ssh_port)] if cfg.ssh_port else []
    logger.debug("ssh %s %s", host, command)
    return [*argv, host, command]


def _launcher_row(here: dict, problem: str | None, cfg: PreflightConfig) -> dict[str, Cell]:
    row = {"python": Cell("OK", here["python"])}
    row.update({name: Cell("OK", version or "not installed") for name, version in here["packages"].items()})
    if problem is None and here["save_dir"]["missing"]:
        problem = "a file written there cannot be read back"
    row["save dir"] = (
        Cell("OK")
        if problem is None
        else Cell(
            "FAIL",
            problem.split(":")[0],
            f"{cfg.save_dir} on the launching host: {problem}",
            "pass a --save-dir this user can create and write, on a filesystem every host mounts",
        )
    )
    return row


def _host_row(
    cfg: PreflightConfig,
    host: str,
    hosts: list[str],
    here: dict,
    first: dict | Unreachable,
    second: dict | Unreachable | None,
    seen_here: bool | None,
    ifaces: list[Setting],
) -> dict[str, Cell]:
    if isinstance(first, Unreachable):
        reached = {"ssh": Cell("OK")} if first.column == "python" else {}
        return {**reached, first.column: _unreachable(cfg, host, first)}
    row = {"ssh": Cell("OK"), "python": _same(host, "Python", here["python"], first["python"], cfg)}
    for name, version in here["packages"].items():
        row[name] = _same(host, name, version, first["packages"][name], cfg)
    if host == hosts[0]:
        row["master port"] = _master_cell(cfg, host, first)
    row["save dir"] = _save_dir_cell(cfg, host, first["save_dir"], second, seen_here)
    row["interfaces"] = _interfaces_cell(host, first["interfaces"], ifaces, multi_host=len(hosts) > 1)
    return row


def _unreachable(cfg: PreflightConfig, host: str, why: Unreachable) -> Cell:
    if why.column == "ssh":
        fix = (
            f"make `ssh {host} true` work from this host without a password: the host up, sshd running, "
            f"{host} resolvable, this user's key in its authorized_keys (or drop {host} from the hostfile)"
        )
        return Cell("FAIL", "unreachable", why.detail, fix)
    fix = (
        f"install the same environment at {cfg.python} on {host}: the runner starts every rank with that path"
    )
    return Cell("FAIL", "not found", why.detail, fix)


def _same(host: str, name: str, here: str | None, there: str | None, cfg: PreflightConfig) -> Cell:
    if here == there:
        return Cell("OK")
    found = there or "not installed"
    detail = f"{name} {found} on {host}, {here or 'not installed'} on the launching host ({cfg.python})"
    fix = (
        f"install {name} {here} in {cfg.python}'s environment on {host}"
        if here
        else f"uninstall it on {host}"
    )
    return Cell("FAIL", found, detail, fix + ": every rank must run the same versions")


def _master_cell(cfg: PreflightConfig, host: str, facts: dict) -> Cell:
    addresses = [a for addrs in facts["interfaces"].values() for a in addrs]
    addr = cfg.master_addr
    if addr is not None and addr != host and addr not in addresses and _resolve(addr) not in addresses:
        detail = f"--master-addr {addr} is not {host}, the first host, where rank 0 listens"
        fix = f"pass --master_addr {host} (or one of its addresses: {', '.join(addresses)}), "
        fix += "or list its host first"
        return Cell("FAIL", "not the first host", detail, fix)
    if facts["port"] is not None:
        detail = f"port {cfg.master_port} on {host}: {facts['port']}"
        fix = (
            f"pick another --master_port (each job on a host needs its own), or stop what listens there "
            f"(`ss -ltnp 'sport = :{cfg.master_port}'` on {host} names it)"
        )
        return Cell("FAIL", facts["port"], detail, fix)
    return Cell("OK")


def _resolve(name: str) -> str | None:
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None


def _save_dir_cell(
    cfg: PreflightConfig, host: str, wrote: dict, read: dict | Unreachable | None, seen_here: bool | None
) -> Cell:
    where = f"{cfg.save_dir} on {host}"
    shared_fix = (
        "put --save-dir on a filesystem that every host mounts at the same path (NFS, Lustre, ...): "
        "the ranks of all hosts save one checkpoint into it"
    )
    if wrote["problem"] == "missing":
        return Cell("FAIL", "missing", f"{where} does not exist (it does on the launching host)", shared_fix)
    if wrote["problem"] is not None:
        fix = f"make {cfg.save_dir} a writable directory on {host} for the user the ranks run as"
        return Cell("FAIL", wrote["problem"].split(":")[0], f"{where}: {wrote['problem']}", fix)
    unseen = []
    if wrote["missing"]:
        unseen.append("the file the launching host wrote is not there")
    if seen_here is False:
        unseen.append(f"the file {host} wrote is not seen by the launching host")
    if isinstance(read, Unreachable):
        unseen.append(f"could not look for the other hosts' files: {read.detail}")
    elif read is not None and read["save_dir"]["missing"]:
        unseen.append(f"the files of {', '.join(read['save_dir']['missing'])} are not there")
    if unseen:
        return Cell("FAIL", "not shared", f"{where}: " + "; ".join(unseen), shared_fix)
    return Cell("OK")


def _interfaces_cell(
    host: str, interfaces: dict[str, list[str]], settings: list[Setting], multi_host: bool
) -> Cell:
    have = ", ".join(f"{n} {' '.join(a) or '(no IPv4)'}" for n, a in interfaces.items())
    candidates = ", ".join(
        f"{n} ({a[0]})" for n, a in interfaces.items() if a and not a[0].startswith("127.")
    )
    for s in settings:
        missing = unmatched(s, interfaces)
        if missing:
            detail = (
                f"{s.name}={s.value} ({s.source}): no {' or '.join(missing)} with an IPv4 address on {host} "
            )
            detail += f"(it has: {have})"
            fix = f"set {s.name} to the interface of the network the hosts share (on {host}: {candidates})"
            return Cell("FAIL", f"no {missing[0]}", detail, fix)
    for s in settings:
        if s.note:
            fix = f"add {s.name}={s.value} to .deepspeed_env (or to the file DS_ENV_FILE names)"
            return Cell("WARN", "not passed on", s.note, fix)
    if not settings and multi_host:
        detail = (
            "GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME are unset: each rank uses the interface of the "
            "address its hostname resolves to, which on hosts with several networks may not be the shared one"
        )
        fix = "set GLOO_SOCKET_IFNAME (CPU) or NCCL_SOCKET_IFNAME (GPU) in .deepspeed_env; "
        fix += f"on {host}: {candidates}"
        return Cell("WARN", "unset", detail, fix)
    return Cell("OK")


def _absolute(path: str) -> Path:
    return Path(path).absolute()  # the hosts resolve it, not this working directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="codeparrot-preflight",
        description=__doc__.split("\n\n")[0],
        example="codeparrot-preflight --hostfile hosts --save-dir /shared/runs/codeparrot-small",
    )
    parser.add_argument("--hostfile", type=Path, required=True)
    parser.add_argument(
        "--save-dir", type=_absolute, required=True, help="the checkpoint directory of the run"
    )
    parser.add_argument("--master-addr", help="default: the first host")
    parser.add_argument(
        "--master-port", type=int, help="default: a port free on the first host, chosen and printed"
    )
    parser.add_argument("--launcher", choices=("pdsh", "openmpi"), default="pdsh")
    parser.add_argument("--launcher-args", default="", help="the runner's --launcher_args")
    parser.add_argument("--ssh-port", type=int)
    parser.add_argument("--ssh-timeout", type=int, default=5, help="seconds to connect (default 5)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose, quiet=not args.verbose)
    fields = {f.name for f in dataclasses.fields(PreflightConfig)}
    cfg = PreflightConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        report = preflight(cfg)
    except HostfileError as e:
        print(e, file=sys.stderr)
        return 2
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
