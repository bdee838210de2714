"""What the preflight needs to know from one host. Standard library only: the preflight sends this file's
text over ssh as the program of `python - REQUEST` (the host needs the interpreter, not this package), and
runs `answer()` in-process for the launching host. Prints one JSON line.

Request (JSON): {"phase": "write" | "read", "save_dir": str, "token": str, "me": str, "others": [str],
"port": int}. Marker files are `<save_dir>/.preflight-<token>-<name>`; "write" leaves this host's marker
and looks for the launching host's ("launcher"); "read" looks for the others'. The preflight removes them.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import json
import os
import socket
import struct
import sys

PACKAGES = ("torch", "deepspeed", "codeparrot-ds")
SIOCGIFADDR = 0x8915  # <linux/sockios.h>: an interface's IPv4 address


def marker(save_dir: str, token: str, name: str) -> str:
    return os.path.join(save_dir, f".preflight-{token}-{name}")


def answer(request: dict) -> dict:
    if request["phase"] == "read":
        return {"save_dir": read_markers(request)}
    return {
        "hostname": socket.gethostname(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "packages": {name: _version(name) for name in PACKAGES},
        "interfaces": interfaces(),
        "port": port_problem(request["port"]),
        "save_dir": write_marker(request),
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def interfaces() -> dict[str, list[str]]:
    """Interface name -> its IPv4 address (empty when it has none)."""
    out: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                out[name] = [socket.inet_ntoa(raw[20:24])]
            except OSError:  # EADDRNOTAVAIL: no IPv4 address
                out[name] = []
    return out


def port_problem(port: int) -> str | None:
    """None if a server could listen on `port` on all addresses here (as rank 0's TCP store does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
            s.listen()
        except OSError as e:
            return "in use" if e.errno == errno.EADDRINUSE else f"{e.strerror} (errno {e.errno})"
    return None


def write_marker(request: dict) -> dict:
    """Leave this host's marker; report whether the launching host's is visible."""
    save_dir, token = request["save_dir"], request["token"]
    if not os.path.isdir(save_dir):
        return {"problem": "missing" if not os.path.exists(save_dir) else "not a directory"}
    try:
        with open(marker(save_dir, token, request["me"]), "w") as f:
            f.write(token)
    except OSError as e:
        return {"problem": f"not writable: {e.strerror}"}
    return {"problem": None, "missing": [] if seen(save_dir, token, "launcher") else ["launcher"]}


def read_markers(request: dict) -> dict:
    save_dir, token = request["save_dir"], request["token"]
    missing = [name for name in request["others"] if not seen(save_dir, token, name)]
    return {"problem": None, "missing": missing}


def seen(save_dir: str, token: str, name: str) -> bool:
    try:
        with open(marker(save_dir, token, name)) as f:
            return f.read() == token
    except OSError:
        return False


if __name__ == "__main__":
    print(json.dumps(answer(json.loads(sys.argv[1]))))
