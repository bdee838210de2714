"""The environment DeepSpeed's runner gives ranks it starts over ssh (pdsh) or mpirun: the variables whose
names start with one of FORWARDED (deepspeed/launcher/runner.py EXPORT_ENVS; NCCL* too on CUDA), then the
lines of the `.deepspeed_env` files, `KEY=VALUE` each, read from the home directory and then the working
directory. DS_ENV_FILE renames the file, or names an absolute path (then read once for each directory).
The runner splits every line at its first '=', so a blank line in the file stops it with a ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

FORWARDED = ("PYTHON", "UCX", "MV2", "MLFLOW")


def read(environ: Mapping[str, str], cwd: Path | None = None) -> dict[str, str]:
    """The variables of the `.deepspeed_env` files the runner would read (later files win)."""
    name = environ.get("DS_ENV_FILE", ".deepspeed_env")
    out: dict[str, str] = {}
    for directory in (Path.home(), cwd or Path.cwd()):
        path = directory / name
        if path.is_file():
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    out[key.strip()] = value.strip()
    return out
