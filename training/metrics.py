"""A run's records: the peak FLOP/s MFU is measured against, the memory in use, and MetricsWriter (rank 0's
metrics.jsonl and TensorBoard scalars). The log format is cmdline.logs'; the step lines, training.loop's."""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path
from typing import Any

import torch

from training.gpus import GPUS, gpu_key
from training.run_files import METRICS

logger = logging.getLogger(__name__)


def peak_flops(precision: str, override_tflops: float | None) -> float | None:
    """Per-device peak FLOP/s for MFU: the override, a known GPU's, or None (unknown: MFU not shown)."""
    if override_tflops:
        return override_tflops * 1e12
    if torch.cuda.is_available():
        key = gpu_key(torch.cuda.get_device_name())
        if key is not None:
            return GPUS[key].peak_tflops(precision) * 1e12
    return None


def memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class MetricsWriter:
    """Rank 0 only: JSONL lines and TensorBoard scalars under the run directory."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._tb = None
        self._tb_dir = run_dir / "tensorboard"
        self._tb_tried = False
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(run_dir / METRICS, "a")  # noqa: SIM115 - closed in close()

    def _tensorboard(self) -> Any:
        """The SummaryWriter, made at the first write: importing torch.utils.tensorboard costs about 0.35 s,
        which would otherwise come before the first step."""
        if not self._tb_tried:
            self._tb_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self._tb_dir))
            except ImportError:
                logger.warning(
                    "tensorboard is not installed: no TensorBoard events (pip install tensorboard)"
                )
        return self._tb

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._line({"step": step, **values})
        if self._tensorboard() is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def event(self, step: int, name: str, values: dict[str, Any]) -> None:
        """A mark in the run's history, not a measurement: one JSONL line `{"step", "event": name, ...}` and
        no TensorBoard scalar. Readers of the step records skip lines that have an "event" key."""
        if self.enabled:
            self._line({"step": step, "event": name, **values})

    def _line(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
