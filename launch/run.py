"""codeparrot-launch: the `deepspeed` command, with signals that end in a checkpoint.

    codeparrot-launch --num_gpus 8 pretrain_gpt.py --config configs/codeparrot_zero2.json
    codeparrot-launch --hostfile hosts pretrain_gpt.py --config configs/codeparrot_zero2.json
    codeparrot-launch --hostfile hosts --launcher openmpi \\
        --launcher_args "--mca btl_tcp_if_include ib0 --mca oob_tcp_if_include ib0" pretrain_gpt.py ...

The arguments are the DeepSpeed runner's, unchanged; it runs as a child. What this adds:

- Signals. Ctrl-C (SIGINT), SIGTERM or SIGUSR1 to this command asks every rank on every host to finish its
  step, save a checkpoint and exit 0; the command waits until this host's ranks have left (also when the
  runner itself was signalled, as SLURM signals every process of a cancelled job) and exits with the
  runner's status. A second SIGINT or SIGTERM stops every rank at once (exit 130 or 143), except a
  duplicate of the same stop: sent by a process within DUPLICATE_WINDOW_S of the first, and the same
  signal or one from this command's parent (on `scancel` SLURM signals this command and the batch script,
  whose trap forwards another). A Ctrl-C typed at a terminal is never a duplicate. The request reaches
  the ranks as SIGUSR1: on one node directly, across nodes through pdsh to
  each host (`python -m launch.run --signal-ranks`, with a time limit, so a hung host cannot hold up a
  stop), and through the MPI launcher otherwise (mpirun forwards SIGUSR1 to every rank). The runner
  itself runs in its own session, so a terminal's Ctrl-C reaches only this command.
- Only this launch's ranks are signalled. On this host they are found in this command's own process tree
  (it is a child subreaper, so ranks whose launcher died stay in it); on other hosts by a per-launch id,
  CODEPARROT_LAUNCH_ID, that every rank carries in its environment. A process of another job, even with the
  same master port, is never touched.
- The environment of remote ranks. The runner forwards only PYTHON*, UCX*, MV2*, MLFLOW* (and NCCL* on
  GPUs) to other hosts; this writes a `.deepspeed_env` (DS_ENV_FILE) that also carries PATH,
  LD_LIBRARY_PATH, OMP_NUM_THREADS and the GLOO_*/NCCL_*/TORCH_*/TRITON_* settings, after the lines of
  the user's own `.deepspeed_env`. A value the remote shell would expand or break (`$`, backticks, double
  quotes, backslashes; for MPI launchers anything DeepSpeed would put in quotes) is refused with the name
  of the variable, instead of reaching the ranks changed.
- OMP_NUM_THREADS, when unset, is this host's cores divided by the ranks per host (the runner leaves it
  unset, and on CPU ranks oversubscribed threads make steps several times slower).
- The master port, when not given, follows launch/ports.py: a free port on the first host instead of 29500,
  so two jobs sharing a host do not collide.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import itertools
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from cmdline import EXIT_OK, EXIT_UNUSABLE
from cmdline.logs import setup_logging
from launch.ports import PortError, choose_master_port

logger = logging.getLogger("codeparrot-launch")
HELP = f"{__doc__}\nOptions: the DeepSpeed runner's (`deepspeed --help`), then the script and its arguments."
EXAMPLE = (
    "codeparrot-launch --num_gpus 2 pretrain_gpt.py --config configs/demo.json "
    "--ds_config ds_configs/zero2_cpu.json"
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Variables remote ranks need that the runner does not forward by itself.
# SLURM_JOB_ID and SLURM_RESTART_COUNT let rank 0 record its job in the run lock (training/run_lock.py), so a
# requeued job on the hostfile path takes its own stale lock over.
FORWARD = (
    "PATH",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS",
    "DS_ACCELERATOR",
    "HF_HOME",
    "MASTER_PORT",
    "SLURM_JOB_ID",
    "SLURM_RESTART_COUNT",
)
FORWARD_PREFIXES = ("GLOO_", "TORCH_", "TORCHINDUCTOR_", "TRITON_", "NCCL_", "CODEPARROT_")
STOP = signal.SIGUSR1  # what a rank takes as "finish the step, save, exit 0" (training.loop.StopRequest)
LAUNCH_ID = "CODEPARROT_LAUNCH_ID"  # in every rank's environment: which launch it belongs to
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# A second SIGINT/SIGTERM sent by a process within this many seconds of the first is the same stop
# delivered twice (SLURM signals every process of a job, and the batch script forwards it), not a
# request to stop at once.
DUPLICATE_WINDOW_S = 10.0
SI_KERNEL = 0x80  # si_code of a signal the kernel raised, e.g. a terminal's Ctrl-C (not a kill() call)
RELAY_CONNECT_S = 10  # pdsh's connect timeout when relaying a signal to other hosts
STOP_WAIT_S = 900  # how long a host's relay waits for its ranks to save and leave
KILL_RELAY_S = 15  # the most a second Ctrl-C waits for other hosts before this command exits
# Characters the DeepSpeed runner passes through unchanged: pdsh's remote shell expands or breaks the
# others inside the double quotes the runner adds; MPI launchers take the quotes as part of the value.
SHELL_SAFE = re.compile(r"[\w@%+=:,./-]*")
SHELL_ALTERED = re.compile(r'[$`"\\\n]')


class LaunchConfigError(ValueError):
    """The launch cannot start as given; the message names the value and the fix."""


@dataclasses.dataclass
class RunnerView:
    """What the runner will do, read with its own parser and hostfile reader."""

    hosts: list[str]  # the active hosts, in order; ["localhost"] for one node
    slots: int  # ranks on the busiest host
    multi_node: bool  # ranks on other hosts through pdsh or an MPI launcher
    launcher: str
    master_port: int
    ssh_port: int | None
    pdsh_args: list[str]
    argv: list[str]  # the runner's arguments, with the master port filled in


def runner_view(argv: Sequence[str]) -> RunnerView:
    from deepspeed.launcher import runner

    args = runner.parse_args(list(argv))
    given = any(a == "--hostfile" or a.startswith("--hostfile=") for a in argv)
    pool = _hostfile_pool(runner, args.hostfile, given)
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
    return RunnerView(
        hosts=hosts,
        slots=slots,
        multi_node=multi,
        launcher=args.launcher.lower(),
        master_port=port,
        ssh_port=args.ssh_port,
        pdsh_args=shlex.split(args.launcher_args) if args.launcher.lower() == "pdsh" else [],
        argv=argv,
    )


def _hostfile_pool(runner, path: str, given: bool) -> dict:
    """The runner's own reading of the hostfile, after ours has said what is wrong with it in one message
    (the runner raises a bare ValueError or UnicodeDecodeError on a directory or a binary file). A hostfile
    the command line names (`given`) must exist: the runner would go on with this host alone."""
    from launch.hostfile import HostfileError, read_hostfile

    if given and not os.path.exists(path):
        raise LaunchConfigError(
            f"--hostfile {path}: no such file, and the DeepSpeed runner would go on with this host alone; "
            "give the hostfile's path, or drop --hostfile for a one-node run"
        )
    if os.path.exists(path):
        try:
            read_hostfile(path)
        except HostfileError as e:
            raise LaunchConfigError(str(e)) from None
    return runner.fetch_hostfile(path)


def write_env_file(env: dict[str, str], directory: Path, launcher: str = "pdsh") -> Path:
    """The `.deepspeed_env` for remote ranks: the user's own lines first, then what they need from here.
    Raises LaunchConfigError for a value that would reach the ranks altered (see SHELL_ALTERED)."""
    from launch import deepspeed_env

    lines = deepspeed_env.read(env)
    for key, value in env.items():
        if (key in FORWARD or key.startswith(FORWARD_PREFIXES)) and "\n" not in value:
            lines.setdefault(key, value)
    for key, value in lines.items():
        _check_env_value(key, value, launcher)
    path = directory / ".deepspeed_env"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def _check_env_value(key: str, value: str, launcher: str) -> None:
    if launcher == "pdsh":
        bad = sorted(set(SHELL_ALTERED.findall(value)))
        why = "the remote shell would expand or break it inside the runner's double quotes"
    else:
        bad = [] if SHELL_SAFE.fullmatch(value.strip()) else ["a character the runner quotes"]
        why = f"the runner would pass it to {launcher} inside double quotes, which become part of the value"
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise LaunchConfigError(
            f"environment variable {key} for the remote ranks holds {shown} ({why}): "
            f"set {key} in a script the ranks run, or give it a plain value"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--signal-ranks"]:
        return _signal_ranks_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{HELP}\n\nexample:\n  {EXAMPLE}")
        return EXIT_OK
    if not argv:
        print(
            "codeparrot-launch: error: no script to launch; give the DeepSpeed runner's options, then the "
            f"script and its arguments, e.g. {EXAMPLE} (see --help)",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    # Held from the start, taken by the relay once the runner runs: a stop during the seconds of start-up
    # (importing DeepSpeed, probing a port) is kept, not fatal (SIGUSR1's default action ends a process).
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    setup_logging()
    try:
        p = runner_view(argv)
        env = dict(os.environ)
        env[LAUNCH_ID] = uuid.uuid4().hex
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(p.slots, 1)))
            logger.info("OMP_NUM_THREADS=%s (cores / ranks per host)", env["OMP_NUM_THREADS"])
        if p.multi_node and p.launcher != "pdsh":
            # MPI launchers ignore --master_port; the ranks read MASTER_PORT (launch/env.py).
            env["MASTER_PORT"] = str(p.master_port)
        with tempfile.TemporaryDirectory(prefix="codeparrot-launch-") as tmp:
            env["DS_ENV_FILE"] = str(write_env_file(env, Path(tmp), p.launcher if p.multi_node else "pdsh"))
            return Relay(p, env).run()
    except (LaunchConfigError, PortError) as e:
        print(f"codeparrot-launch: error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _become_subreaper() -> None:
    """Orphaned descendants (ranks whose per-node launcher was killed) are re-parented to this process
    instead of init, so this command can still find, signal and wait for them (Linux prctl)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        logger.debug("not a child subreaper: orphaned ranks go to init")


class Relay:
    """Turns the first SIGINT/SIGTERM/SIGUSR1 into a stop request to every rank, a second into a kill.

    Signals are taken synchronously (blocked, then sigtimedwait) so that each comes with its sender: a
    duplicate of the stop already under way is told apart from a second Ctrl-C."""

    def __init__(self, view: RunnerView, env: dict[str, str]) -> None:
        self.view, self.env = view, env
        self.first: tuple[int, float] | None = None  # (signal, monotonic time) of the stop request
        self.relays: list[subprocess.Popen] = []  # pdsh relays still running

    def run(self) -> int:
        """Start the runner and relay until it and this host's ranks are gone. The stop signals must be
        blocked in this thread (main() does it); the runner gets them unblocked."""
        _become_subreaper()
        cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", *self.view.argv]
        self.runner = subprocess.Popen(
            cmd,
            env=self.env,
            start_new_session=True,
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS),
        )
        return self.wait()

    def wait(self) -> int:
        while True:
            info = signal.sigtimedwait(STOP_SIGNALS, 0.2)
            if info is not None:
                code = self.on_signal(info)
                if code is not None:
                    return code
            self._reap_orphans()
            code = self.runner.poll()
            if code is None:
                continue
            if self.ranks():
                if self.first is None:
                    logger.warning("the runner exited (%s) with ranks running: asking them to save", code)
                    self.first = (signal.SIGUSR1, time.monotonic())
                    self.relay(STOP)
                continue  # this host's ranks are saving: a cancelled job must not end before they have
            relaying = [r for r in self.relays if r.poll() is None]
            if relaying and code != 0:
                continue  # the runner was signalled too: other hosts' relays wait for their ranks' save
            for r in relaying:
                r.kill()  # every rank ended with the runner; a relay still waiting is held up by a host
            return code if code >= 0 else 128 - code

    def on_signal(self, info: signal.struct_siginfo) -> int | None:
        """Handle one signal; the exit code when it means stopping now."""
        signum, name = info.si_signo, signal.Signals(info.si_signo).name
        if self.first is None or signum == signal.SIGUSR1:
            logger.warning(
                "%s: every rank finishes its step, saves a checkpoint and exits "
                "(send SIGINT or SIGTERM again to stop at once, without saving)",
                name,
            )
            self.first = self.first or (signum, time.monotonic())
            self.relay(STOP)
            return None
        if self.duplicate(info):
            logger.warning(
                "%s from process %d: the same stop again, still saving (a second one after %.0f s, or a "
                "Ctrl-C at the terminal, stops at once)",
                name,
                info.si_pid,
                DUPLICATE_WINDOW_S,
            )
            return None
        logger.warning("%s again: stopping every rank now", name)
        self.kill()
        return 128 + signum

    def duplicate(self, info: signal.struct_siginfo) -> bool:
        """The same stop delivered again rather than a second request: sent by a process (not typed at a
        terminal) within DUPLICATE_WINDOW_S of the first, and either the same signal or from our parent (the
        batch script forwarding what SLURM sent it)."""
        if info.si_code == SI_KERNEL or self.first is None:
            return False
        first_signal, at = self.first
        soon = time.monotonic() - at < DUPLICATE_WINDOW_S
        return soon and (info.si_signo == first_signal or info.si_pid == os.getppid())

    def ranks(self) -> list:
        """This host's ranks of this launch: in this command's process tree, the children of DeepSpeed's
        per-node launcher, and processes re-parented here whose launcher died."""
        import psutil

        me = psutil.Process()
        known = {self.runner.pid, *(r.pid for r in self.relays)}
        out = []
        for proc in _alive(me.children(recursive=True)):
            try:
                parent = proc.parent()
                if parent is None:
                    continue
                if parent.pid == me.pid and proc.pid not in known and _is_rank_of(proc, self.env[LAUNCH_ID]):
                    out.append(proc)  # an orphaned rank
                elif parent.pid != me.pid and _is_launcher(parent.cmdline()):
                    out.append(proc)
            except psutil.Error:
                continue
        return out

    def relay(self, sig: int) -> None:
        p = self.view
        local = _send(self.ranks(), sig)
        logger.info("%s sent to %d local rank(s)", signal.Signals(sig).name, local)
        if not p.multi_node:
            return
        if p.launcher == "pdsh":
            self.relays.append(self._pdsh_relay(sig, STOP_WAIT_S))
        else:
            # mpirun (and srun, mpiexec) forward SIGUSR1 to every rank they started.
            for child in _children(self.runner.pid):
                os.kill(child, sig)

    def _pdsh_relay(self, sig: int, wait_s: int) -> subprocess.Popen:
        """`python -m launch.run --signal-ranks` on every host through pdsh, in the background; pdsh gives
        up on a host after RELAY_CONNECT_S to connect and wait_s + 30 s in all."""
        p = self.view
        remote = (
            f"cd {shlex.quote(os.getcwd())}; PYTHONPATH={shlex.quote(str(REPO_ROOT))}:$PYTHONPATH "
            f"{shlex.quote(sys.executable)} -m launch.run --signal-ranks {int(sig)} "
            f"{shlex.quote(self.env[LAUNCH_ID])} --wait {wait_s}"
        )
        env = dict(self.env, PDSH_RCMD_TYPE="ssh")
        if p.ssh_port:
            env["PDSH_SSH_ARGS_APPEND"] = f"{env.get('PDSH_SSH_ARGS_APPEND', '')} -p {p.ssh_port}"
        timeouts = ["-t", str(RELAY_CONNECT_S), "-u", str(wait_s + 30)]
        cmd = ["pdsh", "-S", *timeouts, "-f", "1024", "-w", ",".join(p.hosts), *p.pdsh_args, remote]
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        """SIGKILL this host's part of the launch at once, then the other hosts' ranks (at most
        KILL_RELAY_S), then the runner's process group."""
        for relay in self.relays:
            relay.kill()
        _send(self.ranks(), signal.SIGKILL)
        if self.view.multi_node and self.view.launcher == "pdsh":
            relay = self._pdsh_relay(signal.SIGKILL, 0)
            try:
                relay.wait(timeout=KILL_RELAY_S)
            except subprocess.TimeoutExpired:
                relay.kill()
                logger.warning("some hosts did not answer within %d s; their ranks may be left", KILL_RELAY_S)
        _kill_group(self.runner.pid)
        self.runner.wait()

    def _reap_orphans(self) -> None:
        """Collect the exit status of re-parented processes that ended (not the runner's or a relay's,
        which Popen collects)."""
        import psutil

        known = {self.runner.pid, *(r.pid for r in self.relays)}
        for proc in psutil.Process().children():
            try:
                if proc.pid not in known and proc.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(proc.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                pass


def _alive(procs: Iterable) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _send(procs: Iterable, sig: int) -> int:
    import psutil

    count = 0
    for proc in procs:
        try:
            proc.send_signal(sig)
            count += 1
        except psutil.NoSuchProcess:
            pass
    return count


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


def ranks_of_launch(launch_id: str) -> list:
    """This host's ranks of the launch `launch_id`: the children of DeepSpeed's per-node launcher
    (`python -u -m deepspeed.launcher.launch ...`) whose environment carries that id. The launcher itself
    is not a rank: SIGUSR1 would kill it, and it answers SIGTERM by killing its ranks 30 s later.
    Processes of other users, whose environment cannot be read, are never ours."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        if not _is_launcher(proc.info["cmdline"] or []):
            continue
        try:
            if proc.environ().get(LAUNCH_ID) != launch_id:
                continue
            out += _alive(proc.children())
        except psutil.Error:
            continue
    return out


def _is_rank_of(proc, launch_id: str) -> bool:
    """A rank of the launch: started by DeepSpeed's per-node launcher (which sets RANK and LOCAL_RANK)
    with the launch's id in its environment; pdsh, ssh and the runner carry the id but no rank."""
    env = proc.environ()
    return env.get(LAUNCH_ID) == launch_id and "RANK" in env and "LOCAL_RANK" in env


def _is_launcher(cmdline: list[str]) -> bool:
    return _is_python_module(cmdline, "deepspeed.launcher.launch")


def _is_python_module(cmdline: list[str], module: str) -> bool:
    python = bool(cmdline) and Path(cmdline[0]).name.startswith("python")
    return python and any(a == "-m" and b == module for a, b in itertools.pairwise(cmdline))


def _signal_ranks_main(argv: Sequence[str]) -> int:
    """On one host (run there by pdsh): signal this launch's ranks, then wait up to --wait seconds for
    them to leave, so the launch command knows when every host has saved."""
    import psutil

    p = argparse.ArgumentParser(prog="python -m launch.run --signal-ranks")
    p.add_argument("signal", type=int)
    p.add_argument("launch_id")
    p.add_argument("--wait", type=float, default=0.0)
    a = p.parse_args(argv)
    ranks = ranks_of_launch(a.launch_id)
    n = _send(ranks, a.signal)
    print(f"{os.uname().nodename}: {signal.Signals(a.signal).name} sent to {n} rank(s)", flush=True)
    if a.wait > 0:
        psutil.wait_procs(ranks, timeout=a.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
