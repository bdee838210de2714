"""Runs triton_interpreter_cases.py in a fresh pytest process with TRITON_INTERPRET=1.

The variable must be set before triton is first imported, which this process may already have done; a
subprocess keeps the interpreter out of every other test. Triton comes with the dev extra: when it is
missing, or the cases file skips or runs fewer cases than expected, this test fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("triton_interpreter_cases.py")
REPO = Path(__file__).resolve().parents[2]


def test_triton_kernels_match_torch_in_the_interpreter() -> None:
    import triton  # noqa: F401 - fail here, with a plain ImportError, when the dev extra is not installed

    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 9 and "skipped" not in proc.stdout, report
