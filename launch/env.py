"""Where this process stands in a launch, read once: rank, local rank, world, master address/port, device.

Every way a rank is started is read here and nowhere else:

    deepspeed runner, torchrun   RANK WORLD_SIZE LOCAL_RANK LOCAL_SIZE; MASTER_ADDR MASTER_PORT
    Open MPI (mpirun, deepspeed  OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}; MASTER_ADDR, else rank 0's
      --launcher openmpi)          host shared with mpi4py; MASTER_PORT, else a free port on rank 0's host
                                   shared with mpi4py
    MPICH / Intel MPI (PMI)      PMI_RANK PMI_SIZE MPI_LOCALRANKID MPI_LOCALNRANKS; master as Open MPI
    SLURM srun, a task per rank  SLURM_PROCID SLURM_STEP_NUM_TASKS SLURM_LOCALID SLURM_STEP_TASKS_PER_NODE;
                                   the first host of the step's nodelist; MASTER_PORT, else the step's
                                   reserved port (srun --resv-ports)
    PMIx alone                   PMIX_RANK; the rest from mpi4py
    nothing (python script.py)   one rank, 127.0.0.1, a free port

The master port follows one rule, launch/ports.py's. `LaunchEnv.read()` returns one typed value; `export()`
writes the canonical variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, MASTER_ADDR, MASTER_PORT) that
torch.distributed's env:// and DeepSpeed read, so DeepSpeed never runs its own MPI discovery (which takes rank
0's first `hostname -I` address and port 29500).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
from collections.abc import Mapping

from launch.ports import PortError, free_port, reserved_port


class LaunchError(RuntimeError):
    """The launch variables are missing or contradict each other; the message names them and the fix."""


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    rank: int
    local_rank: int
    world: int
    local_world: int
    master_addr: str
    master_port: int
    launcher: str  # "deepspeed", "torchrun", "openmpi", "pmi", "pmix", "slurm" or "none"
    device_type: str  # "cuda" or "cpu"

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None, device_type: str | None = None) -> LaunchEnv:
        env = dict(os.environ if environ is None else environ)
        if device_type is None:
            import torch

            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        fields = _read(env)
        launch = cls(**fields, device_type=device_type)
        launch.check()
        return launch

    @property
    def multi_node(self) -> bool:
        return self.world > self.local_world

    def check(self) -> None:
        problems = []
        if not 0 <= self.rank < self.world:
            problems.append(f"rank {self.rank} is outside the world of {self.world}")
        if not 0 <= self.local_rank < self.local_world:
            problems.append(f"local rank {self.local_rank} is outside this node's {self.local_world} ranks")
        if not 0 < self.master_port < 65536:
            problems.append(f"master port {self.master_port} is not a TCP port")
        if problems:
            raise LaunchError(f"launch variables from {self.launcher}: " + "; ".join(problems))

    def export(self, environ: dict[str, str] | None = None) -> None:
        """Write the canonical variables that torch.distributed (env://) and DeepSpeed read."""
        target = os.environ if environ is None else environ
        target.update(
            RANK=str(self.rank),
            LOCAL_RANK=str(self.local_rank),
            WORLD_SIZE=str(self.world),
            LOCAL_SIZE=str(self.local_world),
            LOCAL_WORLD_SIZE=str(self.local_world),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )

    def init_distributed(self, cpu_shm_allreduce: bool = False, timeout_s: float | None = None) -> None:
        """Join the process group through DeepSpeed (gloo on CPU, NCCL on CUDA). `timeout_s`: how long a
        collective (and the rendezvous) may wait for a rank; None keeps DeepSpeed's default (10 minutes,
        or DEEPSPEED_TIMEOUT minutes)."""
        import datetime

        import deepspeed
        from deepspeed.accelerator import get_accelerator

        self.export()
        if get_accelerator().device_name() == "cpu" and not cpu_shm_allreduce:
            # On the CPU accelerator the first init_distributed JIT-compiles a shared-memory all-reduce op
            # (40-90 s of g++, a 66 MiB /dev/shm buffer per launch). There is no switch: build_shm_op() in
            # deepspeed/comm/torch.py builds it when ops.__compatible_ops__["deepspeed_shm_comm"] is true,
            # and that dict persists edits. gloo's all-reduce is used instead.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        deepspeed.init_distributed(
            dist_backend=get_accelerator().communication_backend_name(), auto_mpi_discovery=False, **timeout
        )

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world} (local {self.local_rank}/{self.local_world}) "
            f"via {self.launcher}, master {self.master_addr}:{self.master_port}, {self.device_type}"
        )


def finalize_mpi() -> None:
    """Call MPI_Finalize if mpi4py initialised MPI in this process: a rank that leaves without it makes
    mpirun report the job as "exiting improperly" and exit 1 although every rank succeeded."""
    import sys

    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise LaunchError(f"{name}={env[name]!r} is not an integer; unset it or fix the launcher") from None


def _read(env: dict[str, str]) -> dict:
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed"
        local_world = env.get("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE"))
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if n not in env]
        if missing and _int(env, "WORLD_SIZE") > 1:
            raise LaunchError(
                f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not: start the ranks with "
                "`deepspeed`, `torchrun`, or set MASTER_ADDR and MASTER_PORT"
            )
        return dict(
            rank=_int(env, "RANK"),
            world=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            local_world=int(local_world) if local_world else _int(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port(),
            launcher=launcher,
        )
    if "OMPI_COMM_WORLD_RANK" in env:
        return _mpi(
            env,
            "openmpi",
            rank=_int(env, "OMPI_COMM_WORLD_RANK"),
            world=_int(env, "OMPI_COMM_WORLD_SIZE"),
            local_rank=_int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
            local_world=_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
        )
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return _mpi(
            env,
            "pmi",
            rank=_int(env, "PMI_RANK"),
            world=_int(env, "PMI_SIZE"),
            local_rank=_int(env, "MPI_LOCALRANKID") if "MPI_LOCALRANKID" in env else None,
            local_world=_int(env, "MPI_LOCALNRANKS") if "MPI_LOCALNRANKS" in env else None,
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        return _slurm(env)
    if "PMIX_RANK" in env:
        return _mpi(env, "pmix", rank=_int(env, "PMIX_RANK"), world=None, local_rank=None, local_world=None)
    return dict(
        rank=0,
        world=1,
        local_rank=0,
        local_world=1,
        master_addr="127.0.0.1",
        master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port(),
        launcher="none",
    )


def _slurm(env: dict[str, str]) -> dict:
    """`srun` with one task per rank (the SLURM step's variables; the batch script itself has no step)."""
    nodes = expand_hostlist(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
    node_id = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    per_node = expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1"))
    return dict(
        rank=_int(env, "SLURM_PROCID"),
        world=_int(env, "SLURM_STEP_NUM_TASKS"),
        local_rank=_int(env, "SLURM_LOCALID"),
        local_world=per_node[node_id] if node_id < len(per_node) else 1,
        master_addr=env.get("MASTER_ADDR", nodes[0]),
        master_port=_slurm_port(env),
        launcher="slurm",
    )


def _slurm_port(env: dict[str, str]) -> int:
    """Every task of the step must compute the same port with no way to talk yet: MASTER_PORT (which
    launch/slurm/train_srun.sbatch probes on the first node), else the step's reserved port. A port derived
    from the job id would collide for jobs whose ids differ by the modulus on a shared node."""
    if "MASTER_PORT" in env:
        return _int(env, "MASTER_PORT")
    try:
        port = reserved_port(env)
    except PortError as e:
        raise LaunchError(str(e)) from None
    if port is None:
        raise LaunchError(
            "srun started the ranks without MASTER_PORT and without reserved ports: export "
            "MASTER_PORT=$(python -m launch.ports) before srun (launch/slurm/train_srun.sbatch does), or "
            "use `srun --resv-ports=1` where the cluster sets MpiParams=ports=..."
        )
    return port


def _mpi(env: dict[str, str], launcher: str, **known: int | None) -> dict:
    """An MPI launch: what the launcher's variables do not say (world, local rank, master address and port)
    comes from mpi4py: rank 0's hostname and a port free there, broadcast to every rank."""
    fields = dict(known)
    addr = env.get("MASTER_ADDR")
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None
    if addr is None or port is None or None in fields.values():
        try:
            from mpi4py import MPI
        except ImportError:
            raise LaunchError(
                f"started by {launcher} without MASTER_ADDR or MASTER_PORT: install mpi4py (pip install "
                "mpi4py) so rank 0's address and port can be shared, or export both to every rank"
            ) from None
        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()
        if None in fields.values():
            hosts = comm.allgather(MPI.Get_processor_name())
            me = hosts[rank]
            fields.update(rank=rank, world=comm.Get_size(), local_rank=hosts[:rank].count(me))
            fields["local_world"] = hosts.count(me)
        # rank 0's host is where the process group listens: its address and a port free there
        mine = (_reachable_address(), free_port()) if rank == 0 else None
        addr0, port0 = comm.bcast(mine, root=0)
        addr, port = addr or addr0, port if port is not None else port0
    return dict(**fields, master_addr=addr, master_port=port, launcher=launcher)


def _reachable_address() -> str:
    """This host's address as other hosts reach it: its hostname when that resolves to a non-loopback
    address, else the first of `hostname -I`."""
    name = socket.gethostname()
    try:
        if not socket.gethostbyname(name).startswith("127."):
            return name
    except OSError:
        pass
    try:
        return subprocess.check_output(["hostname", "-I"], text=True).split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return name


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list, e.g. "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1
    (what `scontrol show hostnames` prints, without needing scontrol on the node)."""
    hosts: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[]*)(?:\[([^\]]*)\])?([^,\[]*),?", hostlist):
        if not ranges:
            if prefix + suffix:
                hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}{suffix}")
    return hosts


def expand_counts(counts: str) -> list[int]:
    """SLURM's per-node task counts, e.g. "2(x3),1" -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in counts.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise LaunchError(f"cannot read the SLURM task counts {counts!r}")
        out += [int(m[1])] * int(m[2] or 1)
    return out
