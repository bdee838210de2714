"""Logging for a run: one `setup_logging(rank)`, rank 0's step lines, TensorBoard events, metrics.jsonl."""

from __future__ import annotations

import json
import logging
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """One GPU model, as the vendor rates it.

    ``device_name``: a substring of ``torch.cuda.get_device_name()`` that identifies it (first match wins,
    so a more specific name comes first). ``memory_gib``: the board's memory as ``nvidia-smi`` reports its
    total in MiB, divided by 1024 (the vendor's "40 GB" A100 is 40960 MiB, "80 GB" 81920 MiB for the A100
    and 81559 MiB for the H100, "141 GB" H200 143771 MiB); the CUDA context and the allocator take some of
    it. ``bf16_tflops`` / ``fp32_tflops``: dense (no sparsity) tensor-core bf16 and plain fp32 peaks.
    ``intra_node_gb_s``: GB/s one GPU sends to the others of its node, per direction: NVLink through NVSwitch
    on SXM boards (A100 300 of NVLink 3's 600 GB/s both ways, H100/H200 450 of NVLink 4's 900), PCIe Gen5
    x16 for the H100 PCIe (64; its optional NVLink bridge joins only pairs).
    """

    device_name: str
    memory_gib: float
    bf16_tflops: float
    fp32_tflops: float
    intra_node_gb_s: float

    def peak_tflops(self, precision: str) -> float:
        return self.bf16_tflops if precision == "bf16" else self.fp32_tflops


# The one table of GPU facts: MFU in training (peak_flops) and codeparrot-plan read it.
GPUS: MappingProxyType[str, GpuSpec] = MappingProxyType(
    {
        "a100-40gb": GpuSpec(
            device_name="A100",
            memory_gib=40960 / 1024,
            bf16_tflops=312.0,
            fp32_tflops=19.5,
            intra_node_gb_s=300.0,
        ),
        "a100-80gb": GpuSpec(
            device_name="A100",
            memory_gib=81920 / 1024,
            bf16_tflops=312.0,
            fp32_tflops=19.5,
            intra_node_gb_s=300.0,
        ),
        "h100-pcie": GpuSpec(
            device_name="H100 PCIe",
            memory_gib=81559 / 1024,
            bf16_tflops=756.0,
            fp32_tflops=51.0,
            intra_node_gb_s=64.0,
        ),
        "h100-sxm": GpuSpec(
            device_name="H100",
            memory_gib=81559 / 1024,
            bf16_tflops=989.0,
            fp32_tflops=67.0,
            intra_node_gb_s=450.0,
        ),
        "h200": GpuSpec(
            device_name="H200",
            memory_gib=143771 / 1024,
            bf16_tflops=989.0,
            fp32_tflops=67.0,
            intra_node_gb_s=450.0,
        ),
    }
)


def gpu_key(device_name: str, memory_bytes: int | None = None) -> str | None:
    """The key of `GPUS` (codeparrot-plan's --gpu) for a ``torch.cuda.get_device_name()``: the first entry
    whose device name it holds; among entries of the same name (A100 40 and 80 GB) the one whose memory is
    nearest ``memory_bytes`` when given. None for a GPU not in the table."""
    matches = [key for key, spec in GPUS.items() if spec.device_name in device_name]
    if not matches:
        return None
    same = [key for key in matches if GPUS[key].device_name == GPUS[matches[0]].device_name]
    if memory_bytes is None:
        return same[0]
    return min(same, key=lambda key: abs(GPUS[key].memory_gib * 2**30 - memory_bytes))


def setup_logging(rank: int, verbose: bool = False) -> None:
    """Rank 0 logs at INFO (DEBUG with verbose); other ranks only warnings and errors."""
    level = (logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        stream=sys.stdout,
        force=True,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


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
            self._jsonl = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()

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
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        if self._tensorboard() is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
