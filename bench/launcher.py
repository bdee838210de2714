"""The `deepspeed` launch that the benchmarks and the tests share: one command line and its environment.

    deepspeed --num_gpus R --master_addr 127.0.0.1 --master_port P [--module] <script or module> <args>

``deepspeed`` is this interpreter's launcher (or ``codeparrot-launch``, which relays signals to it), on R
local ranks (CPU ranks where there is no GPU), P a port nothing listens on (launch.ports.free_port). The
environment: one thread per rank (2 ranks x torch's default threads on 2 cores is up to 10x slower), this
interpreter's bin first on PATH (the console scripts; ninja for torch's JIT builds), this checkout first on
PYTHONPATH (the ranks import bench and the tests' workers from it), and, given a directory, private torch
extension and inductor caches under it (never the shared ~/.cache; one directory for several launches
lets the later ones compile warm).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from launch.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENTRY = ROOT / "pretrain_gpt.py"


def deepspeed_command(
    target: str | Path,
    *args: str | Path,
    ranks: int = 2,
    master_port: int | None = None,
    module: bool = False,
    runner: str = "deepspeed",
) -> list[str]:
    """The launch of ``target`` (a script, or with ``module`` a module run as ``python -m``) with ``args``
    on ``ranks`` local ranks, at ``master_port`` (default: a free port)."""
    port = free_port() if master_port is None else master_port
    cmd = [
        str(BIN / runner),
        "--num_gpus",
        str(ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
    ]
    return [*cmd, *(["--module"] if module else []), str(target), *map(str, args)]


def pretrain_command(
    config: str | Path, ds_config: str | Path, *extra: str | Path, script: Path = ENTRY, **launch: Any
) -> list[str]:
    """`deepspeed_command` of pretrain_gpt.py (or ``script``, a stand-in that takes its arguments) with a
    run config, a DeepSpeed JSON and ``extra`` arguments (``--set`` overrides); ``launch``: the keywords
    of `deepspeed_command`."""
    return deepspeed_command(script, "--config", config, "--ds_config", ds_config, *extra, **launch)


def deepspeed_env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a launch: one thread per rank, the venv's bin on PATH, the checkout
    on PYTHONPATH, with ``cache`` the torch extension and inductor caches under it; then ``extra``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join(filter(None, [str(BIN), os.environ.get("PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if cache is not None:
        env["TORCH_EXTENSIONS_DIR"] = str(Path(cache) / "torch_ext")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache) / "inductor")
    return {**env, **extra}
