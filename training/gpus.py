"""The GPU table: each supported GPU's memory, dense peaks and link rate, and the names people call it by.

Torch-free, so that codeparrot-plan starts without importing torch. Training's MFU
(training.metrics.peak_flops), codeparrot-plan (plan/) and the GPU benchmark read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


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


# The one table of GPU facts.
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


# What people type for --gpu, to the variant it means: the SXM board (the one clusters mostly run) and the
# larger A100.
ALIASES: MappingProxyType[str, str] = MappingProxyType({"h100": "h100-sxm", "a100": "a100-80gb"})


def resolve_gpu(name: str) -> tuple[str, str | None]:
    """`name` as typed (`H100`, `h100`, `A100-40GB`) -> (the key of GPUS, a note saying which variant a
    short name was taken as, or None when the name was exact). KeyError naming the choices otherwise."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key in GPUS:
        return key, None
    if key in ALIASES:
        full = ALIASES[key]
        others = [k for k in GPUS if k.startswith(key) and k != full]
        note = f"--gpu {name} taken as {full}" + (f" (also known: {', '.join(others)})" if others else "")
        return full, note
    known = ", ".join([*GPUS, *ALIASES])
    raise KeyError(f"--gpu {name!r} is not a GPU of the table; choose one of {known}")
