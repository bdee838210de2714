"""codeparrot-launch: the `deepspeed` command, with signals that end in a checkpoint.

    codeparrot-launch --num_gpus 8 pretrain_gpt.py --config configs/codeparrot_zero2.json
    codeparrot-launch --hostfile hosts pretrain_gpt.py --config configs/codeparrot_zero2.json
    codeparrot-launch --hostfile hosts --launcher openmpi \\
        --launcher_args "--mca btl_tcp_if_include ib0 --mca oob_tcp_if_include ib0" pretrain_gpt.py ...

The arguments are the DeepSpeed runner's, unchanged; it runs as a child. What this adds:

- Signals. Ctrl-C (SIGINT), SIGTERM or SIGUSR1 to this command asks every rank on every host to finish its
  step, save a checkpoint and exit 0; the command then exits 0. A second SIGINT or SIGTERM stops every rank
  at once (exit 130 or 143). The plain runner cannot do this: on one node SIGTERM ends the runner at once
  and leaves the ranks training, detached; across nodes it terminates the ranks one after another with
  30 s of grace each, so a longer save is killed. The request reaches the ranks as SIGUSR1: on one node
  directly, across nodes through pdsh to each host (`python -m launch.run --signal-ranks`), and through
  the MPI launcher otherwise (mpirun forwards SIGUSR1 to every rank). The runner itself runs in its own
  session, so a terminal's Ctrl-C reaches only this command.
- The environment of remote ranks. The runner forwards only PYTHON*, UCX*, MV2*, MLFLOW* (and NCCL* on
  GPUs) to other hosts; this writes a `.deepspeed_env` (DS_ENV_FILE) that also carries PATH,
  LD_LIBRARY_PATH, OMP_NUM_THREADS and the GLOO_*/NCCL_*/TORCH_*/TRITON_* settings, after the lines of
  the user's own `.deepspeed_env`.
- OMP_NUM_THREADS, when unset, is this host's cores divided by the ranks per host (the runner leaves it
  unset, and on CPU ranks oversubscribed threads make steps several times slower).
- The master port, when not given, is a free port on the first host instead of 29500, so two jobs sharing
  a host do not collide.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from launch.env import free_port

logger = logging.getLogger("codeparrot-launch")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Variables remote ranks need that the runner does not forward by itself.
FORWARD = ("PATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "DS_ACCELERATOR", "HF_HOME", "MASTER_PORT")
FORWARD_PREFIXES = ("GLOO_", "TORCH_", "TORCHINDUCTOR_", "TRITON_", "NCCL_", "CODEPARROT_")
STOP = signal.SIGUSR1  # what a rank takes as "finish the step, save, exit 0" (training.loop.StopRequest)


@dataclasses.dataclass
class Plan:
    """What the runner will do, read with its own parser and hostfile reader."""

    hosts: list[str]  # the active hosts, in order; ["localhost"] for one node
    slots: int  # ranks on the busiest host
    multi_node: bool  # ranks on other hosts through pdsh or an MPI launcher
    launcher: str
    master_port: int
    ssh_port: int | None
    pdsh_args: list[str]
    argv: list[str]  # the runner's arguments, with the master port filled in


def plan(argv: Sequence[str]) -> Plan:
    from deepspeed.launcher import runner

    args = runner.parse_args(list(argv))
    pool = runner.fetch_hostfile(args.hostfile)
    argv = list(argv)
    if not pool:
        import torch

        slots = args.num_gpus if args.num_gpus > 0 else max(torch.cuda.device_count(), 1)
        hosts, multi = ["localhost"], False
    else:
        active = runner.parse_inclusion_exclusion(pool, args.include, args.exclude)
        active = runner.apply_num_nodes_and_gpus(active, args.num_nodes, args.num_gpus)
        hosts, slots = list(active), max(len(v) for v in active.values())
        multi = (args.force_multi or len(active) > 1) and not args.no_ssh
    port = args.master_port
    if "--master_port" not in argv and not any(a.startswith("--master_port=") for a in argv):
        port = choose_master_port(hosts[0] if multi else None, args.ssh_port)
        argv = ["--master_port", str(port), *argv]
    return Plan(
        hosts=hosts,
        slots=slots,
        multi_node=multi,
        launcher=args.launcher.lower(),
        master_port=port,
        ssh_port=args.ssh_port,
        pdsh_args=shlex.split(args.launcher_args) if args.launcher.lower() == "pdsh" else [],
        argv=argv,
    )


def choose_master_port(host: str | None, ssh_port: int | None) -> int:
    """A port nothing listens on, on `host` (over ssh) or here."""
    if host is None:
        return free_port()
    probe = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
    ssh = ["ssh", "-o", "BatchMode=yes", *(["-p", str(ssh_port)] if ssh_port else []), host]
    python = shlex.quote(sys.executable)  # the runner starts remote ranks with this interpreter too
    out = subprocess.run([*ssh, python, "-c", shlex.quote(probe)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(
            f"codeparrot-launch: cannot reach {host} over ssh to choose a master port "
            f"({out.stderr.strip()}); check that `ssh {host} hostname` works without a password, "
            "or pass --master_port"
        )
    return int(out.stdout.split()[-1])


def write_env_file(env: dict[str, str], directory: Path) -> Path:
    """The `.deepspeed_env` for remote ranks: the user's own lines first, then what they need from here."""
    from launch import deepspeed_env

    lines = deepspeed_env.read(env)
    for key, value in env.items():
        if (key in FORWARD or key.startswith(FORWARD_PREFIXES)) and "\n" not in value:
            lines.setdefault(key, value)
    path = directory / ".deepspeed_env"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--signal-ranks"]:
        return _signal_ranks_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    p = plan(argv)
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(p.slots, 1)))
        logger.info("OMP_NUM_THREADS=%s (cores / ranks per host)", env["OMP_NUM_THREADS"])
    if p.multi_node and p.launcher != "pdsh":
        # MPI launchers ignore --master_port; the ranks read MASTER_PORT (launch/env.py).
        env["MASTER_PORT"] = str(p.master_port)
    with tempfile.TemporaryDirectory(prefix="codeparrot-launch-") as tmp:
        env["DS_ENV_FILE"] = str(write_env_file(env, Path(tmp)))
        cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", *p.argv]
        runner = subprocess.Popen(cmd, env=env, start_new_session=True)
        return Relay(p, runner, env).wait()


class Relay:
    """Turns the first SIGINT/SIGTERM/SIGUSR1 into a stop request to every rank, a second into a kill."""

    def __init__(self, plan: Plan, runner: subprocess.Popen, env: dict[str, str]) -> None:
        self.plan, self.runner, self.env = plan, runner, env
        self.received: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    def wait(self) -> int:
        handled = 0
        while True:
            try:
                code = self.runner.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                code = None
            for signum in self.received[handled:]:
                handled += 1
                if handled == 1 or signum == signal.SIGUSR1:
                    logger.warning(
                        "%s: every rank finishes its step, saves a checkpoint and exits "
                        "(send SIGINT or SIGTERM again to stop at once, without saving)",
                        signal.Signals(signum).name,
                    )
                    self.relay(STOP)
                else:
                    logger.warning("%s again: stopping every rank now", signal.Signals(signum).name)
                    self.relay(signal.SIGKILL)
                    _kill_group(self.runner.pid)
                    self.runner.wait()
                    return 128 + signum
            if code is not None:
                return code if code >= 0 else 128 - code

    def relay(self, sig: int) -> None:
        p = self.plan
        if not p.multi_node:
            n = signal_ranks(p.master_port, sig)
            logger.info("%s sent to %d local rank(s)", signal.Signals(sig).name, n)
        elif p.launcher == "pdsh":
            remote = (
                f"cd {shlex.quote(os.getcwd())}; PYTHONPATH={shlex.quote(str(REPO_ROOT))}:$PYTHONPATH "
                f"{shlex.quote(sys.executable)} -m launch.run --signal-ranks {int(sig)} {p.master_port} %n"
            )
            env = dict(self.env, PDSH_RCMD_TYPE="ssh")
            if p.ssh_port:
                env["PDSH_SSH_ARGS_APPEND"] = f"{env.get('PDSH_SSH_ARGS_APPEND', '')} -p {p.ssh_port}"
            cmd = ["pdsh", "-S", "-f", "1024", "-w", ",".join(p.hosts), *p.pdsh_args, remote]
            subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
        elif sig == signal.SIGKILL:
            _kill_group(self.runner.pid)
        else:
            # mpirun (and srun, mpiexec) forward SIGUSR1 to every rank they started.
            for child in _children(self.runner.pid):
                os.kill(child, sig)


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def signal_ranks(master_port: int, sig: int, node_rank: int | None = None) -> int:
    """Send `sig` to this host's ranks of the launch using `master_port` (and, across nodes, `node_rank`,
    which pdsh writes as --node_rank=%n): the children of DeepSpeed's per-node launcher process
    (`python -u -m deepspeed.launcher.launch ...`). The launcher itself is not signalled: SIGUSR1 would
    kill it, and it answers SIGTERM by killing its ranks 30 s later. pdsh and ssh, whose argument lists
    carry the same words, are not matched. Returns how many ranks were signalled."""
    import psutil

    wanted = {f"--master_port={master_port}"} | (
        {f"--node_rank={node_rank}"} if node_rank is not None else set()
    )
    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if not (_is_launcher(cmdline) and wanted <= set(cmdline)):
            continue
        for child in proc.children():
            try:
                child.send_signal(sig)
                count += 1
            except psutil.NoSuchProcess:
                pass
    return count


def _is_launcher(cmdline: list[str]) -> bool:
    python = bool(cmdline) and Path(cmdline[0]).name.startswith("python")
    return python and any(
        a == "-m" and b == "deepspeed.launcher.launch" for a, b in itertools.pairwise(cmdline)
    )


def _signal_ranks_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.run --signal-ranks")
    p.add_argument("signal", type=int)
    p.add_argument("master_port", type=int)
    p.add_argument("node_rank", type=int, nargs="?")
    a = p.parse_args(argv)
    n = signal_ranks(a.master_port, a.signal, a.node_rank)
    print(f"{os.uname().nodename}: {signal.Signals(a.signal).name} sent to {n} rank(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
