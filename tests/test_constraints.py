"""constraints.txt pins every direct dependency of setup.py (install_requires and every extra) to one version,
the environment `make setup` builds holds exactly those versions, and every pip call of the Makefile passes
the file, so a fresh install reproduces the versions the planner's memory model and the parity results were
measured with."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def setup_requirements() -> list[Requirement]:
    """install_requires and every extras_require list, read from setup.py's setup(...) call."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"
    )
    kw = {k.arg: k.value for k in call.keywords}
    extras = ast.literal_eval(kw["extras_require"])
    lines = [*ast.literal_eval(kw["install_requires"]), *(r for extra in extras.values() for r in extra)]
    return [Requirement(line) for line in lines]


def pins() -> dict[str, str]:
    """name -> version of each `name==version` line of constraints.txt; any other form of line fails."""
    out = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.+\-]*)", line)
            assert match, f"constraints.txt: {raw!r} is not an exact pin name==version"
            name = canonicalize_name(match[1])
            assert name not in out, f"constraints.txt pins {name} twice"
            out[name] = match[2]
    return out


def test_every_direct_dependency_is_pinned():
    pinned = pins()
    missing = sorted({canonicalize_name(r.name) for r in setup_requirements()} - set(pinned))
    assert not missing, f"setup.py requires {missing}, not pinned in constraints.txt"


def test_pins_satisfy_setup_py_and_match_the_installed_versions():
    """A pin outside setup.py's range could never install; an installed version other than the pin means
    the environment was not built with -c constraints.txt (torch's local +cpu suffix is allowed)."""
    pinned = pins()
    for req in setup_requirements():
        version = pinned[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req} excludes the pin {version}"
        if req.marker is None or req.marker.evaluate():
            installed = importlib.metadata.version(req.name)
            assert installed.split("+")[0] == version, f"{req.name} {installed} installed, {version} pinned"


def test_every_pip_call_of_the_makefile_passes_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    calls = [line for line in makefile.splitlines() if re.search(r"\bpip install\b", line)]
    assert calls and all("-c constraints.txt" in line for line in calls), calls
    # A changed constraints.txt re-runs the install: the stamp depends on it.
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.MULTILINE)
