"""pretrain_gpt.py with data_tools.manifest.load_manifest printing `manifest read: PATH` at each call
(the run may end in os._exit, so nothing is left to print at the end). Started like pretrain_gpt.py
(test_data_opened_once.py)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import data_tools.manifest as manifest

ROOT = Path(__file__).resolve().parents[2]
real = manifest.load_manifest


def announcing(data_dir):
    print(f"manifest read: {Path(data_dir).resolve()}", flush=True)
    return real(data_dir)


manifest.load_manifest = announcing
sys.argv = [str(ROOT / "pretrain_gpt.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "pretrain_gpt.py"), run_name="__main__")
