"""The variables that pick the network interface of a multi-host job, as the ranks will see them, and
whether a host has what they name.

    GLOO_SOCKET_IFNAME   gloo (CPU): comma-separated interface names
    NCCL_SOCKET_IFNAME   NCCL (GPU): name prefixes, `=name` exact, `^...` excludes
    btl_tcp_if_include,  Open MPI (OMPI_MCA_* or --mca): names or CIDR subnets; DeepSpeed's openmpi runner
    oob_tcp_if_include     passes `--mca btl_tcp_if_include eth0` unless its --launcher_args set it

Set in the launching environment only, GLOO_SOCKET_IFNAME does not reach the ranks (see deepspeed_env.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
from collections.abc import Mapping
from typing import Literal

from launch import deepspeed_env


@dataclasses.dataclass(frozen=True)
class Setting:
    """A variable that picks the network interface: name, value, and how its value is read."""

    name: str
    value: str
    kind: Literal["names", "nccl", "mca"]
    source: str  # where the value comes from
    note: str = ""  # a problem with the setting itself (e.g. not passed on to the ranks)


def interface_settings(environ: Mapping[str, str], launcher: str, launcher_args: str = "") -> list[Setting]:
    """The settings that will reach the ranks: `environ` with the .deepspeed_env files over it and, for
    the openmpi launcher, the MCA parameters of the environment and of the runner's --launcher_args."""
    env_file = deepspeed_env.read(environ)
    merged = {**environ, **env_file}
    settings = []
    for name, kind in (("GLOO_SOCKET_IFNAME", "names"), ("NCCL_SOCKET_IFNAME", "nccl")):
        if merged.get(name):
            note = ""
            if name.startswith("GLOO") and name not in env_file:
                forwarded = ", ".join(f"{p}*" for p in deepspeed_env.FORWARDED)
                note = (
                    f"{name} is set in this environment only, and the DeepSpeed runner passes only "
                    f"{forwarded} variables to the ranks it starts"
                )
            source = ".deepspeed_env" if name in env_file else "environment"
            settings.append(Setting(name, merged[name], kind, source, note))
    if launcher == "openmpi":
        mca = {
            k[len("OMPI_MCA_") :]: (v, "environment") for k, v in merged.items() if k.startswith("OMPI_MCA_")
        }
        args = shlex.split(launcher_args)
        for i in range(len(args) - 2):
            if args[i] in ("--mca", "-mca"):
                mca[args[i + 1]] = (args[i + 2], "--launcher_args")
        # DeepSpeed adds `--mca btl_tcp_if_include eth0` unless the launcher args set it
        defaults = {"btl_tcp_if_include": ("eth0", "DeepSpeed's default without it in --launcher_args")}
        for key in ("btl_tcp_if_include", "oob_tcp_if_include"):
            if key in mca or key in defaults:
                value, source = mca.get(key) or defaults[key]
                settings.append(Setting(key, value, "mca", source))
    return settings


def unmatched(setting: Setting, interfaces: dict[str, list[str]]) -> list[str]:
    """The parts of a setting that match no interface holding an IPv4 address."""
    usable = {n: a for n, a in interfaces.items() if a}
    if setting.kind == "nccl":
        if setting.value.startswith("^"):  # an exclusion list: any other interface will do
            return []
        exact = setting.value.startswith("=")
        parts = setting.value.lstrip("=").split(",")
        matches = (lambda p, n: n == p) if exact else (lambda p, n: n.startswith(p))
        return [] if any(matches(p, n) for p in parts for n in usable) else [f"interface {setting.value}"]
    missing = []
    for part in filter(None, setting.value.split(",")):
        if setting.kind == "mca" and "/" in part:
            net = ipaddress.ip_network(part, strict=False)
            if not any(ipaddress.ip_address(a) in net for addrs in usable.values() for a in addrs):
                missing.append(f"address in {part}")
        elif part not in usable:
            missing.append(f"interface {part}")
    return missing
