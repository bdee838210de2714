"""Loading a bench/ script as a module, for the benchmarks' smoke tests (bench/ is not a package on the
import path of the tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_script(name: str, monkeypatch) -> ModuleType:
    """``bench/<name>.py`` as the module ``bench_<name>``, registered for the test only."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
