"""What the benchmarks share: the machine they ran on, which precisions run natively here, the benchmarks'
model, training step and shards, and one results JSON per run under bench/results/ (rendered by
bench/report.py). The `deepspeed` launch is bench/launcher.py's, the matmul timer and peaks bench/matmul.py's.

A results JSON holds: the benchmark's name and exact command, start/finish times, the machine (CPU model, the
full /proc/cpuinfo flags line and the bf16-relevant flags, cores, torch/deepspeed/transformers/tokenizers
versions), what `train.precision = "auto"` picks here and why, the benchmark's own figures, the rows of the
README table (`table`) and every line the run printed (`printed`, the final ratio line last).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA = 1
PACKAGES = ("torch", "deepspeed", "transformers", "tokenizers")
TABLE_KEYS = ("benchmark", "setting", "precision", "native", "baseline", "ours", "ratio", "how")
RESULT_KEYS = ("schema", "benchmark", "command", "started", "finished", "machine", "precision", "figures")


# ---- processes -----------------------------------------------------------------------------------------


def run_command(cmd: Sequence[str], env: dict[str, str] | None, timeout_s: float) -> str:
    """Run `cmd` from the repository root in its own session, output and errors together; on a timeout
    the whole tree (a launcher and its ranks) is killed, not only `cmd`. Its output, or RuntimeError
    with the tail."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise RuntimeError(f"{' '.join(cmd)} ran over {timeout_s} s:\n{output[-3000:]}") from None
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-4000:]}")
    return output


# ---- the machine -------------------------------------------------------------------------------------


def cpu_flags() -> list[str]:
    """Every flag of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []


def cpu_tag(model: str, flags: Sequence[str]) -> str:
    """A short file-name tag for a CPU: its model's first words and its best matmul extension, e.g.
    ``amd-epyc-avx2``, ``intel-xeon-platinum-8480-amx``."""
    words = re.sub(r"\(r\)|\(tm\)|\bcpu\b|\bprocessor\b|@.*|\d+-core", " ", model.lower())
    name = "-".join(re.findall(r"[a-z0-9+]+", words)[:4]).replace("+", "p") or platform.machine()
    for flag, isa in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512")):
        if flag in flags:
            return f"{name}-{isa}"
    return f"{name}-avx2" if "avx2" in flags else name


def machine_info() -> dict[str, Any]:
    """The CPU (model, all flags, the bf16-relevant ones), cores, GPU if any, and package versions."""
    import torch

    from training.precision import BF16_CPU_FLAGS, cpu_model_and_flags

    model, bf16_flags = cpu_model_and_flags()
    flags = cpu_flags()
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": model,
        "cpu_tag": cpu_tag(model, flags),
        "cpu_flags": " ".join(flags),
        "bf16_flags": list(bf16_flags),
        "bf16_flags_missing": [f for f in BF16_CPU_FLAGS if f not in bf16_flags],
        "simd_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": versions,
    }


def describe_machine(machine: dict[str, Any]) -> str:
    """One line: CPU model, cores, the bf16-relevant flags it has and lacks, versions."""
    have = ", ".join(machine["bf16_flags"]) or "none"
    lacks = ", ".join(machine["bf16_flags_missing"]) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    return (
        f"machine: {machine['cpu_model']} ({machine['cpu_tag']}), {machine['cores']} cores, torch CPU "
        f"capability {machine['torch_cpu_capability']}, bf16 flags: {have} (lacks: {lacks}); {versions}"
    )


# ---- which precisions are native ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionSupport:
    """Whether a precision runs natively here, its matmul speed relative to fp32, and the label to print."""

    precision: str
    native: bool
    vs_fp32: float  # matmul throughput / fp32's, measured by training.precision.probe_cpu
    label: str

    @property
    def note(self) -> str:
        """'native' or 'emulated, 0.05 of fp32', for the table."""
        if self.precision == "fp32":
            return "native"
        return f"{'native' if self.native else 'emulated'}, {self.vs_fp32:.2f} of fp32"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def precision_support(n_embd: int, rows: int, threads: int) -> tuple[dict[str, PrecisionSupport], Any]:
    """Per precision (fp32, bf16): native here or not; and the `PrecisionChoice` of train.precision="auto".

    Runs `training.precision.probe_cpu` (the model's MLP matmul in both dtypes, under a second) on
    ``threads`` threads. bf16 counts as not native exactly when `decide("bf16", ...)` warns that it runs
    far slower than fp32 (below `SLOW_BF16_WARNING` of fp32's speed: emulated, as on AVX2-only CPUs).
    """
    from training.precision import DeviceInfo, cpu_model_and_flags, decide, probe_cpu

    name, flags = cpu_model_and_flags()
    with torch_threads(threads):
        figures = probe_cpu(n_embd, rows)
    info = DeviceInfo(device_type="cpu", name=name, cpu_flags=flags, figures=figures)
    native = decide("bf16", info).warning is None
    speed = figures.bf16_speedup
    where = "on this CPU"
    label = (
        f"bf16 (native {where}, {speed:.2f}x fp32)"
        if native
        else f"bf16 (not native {where}: emulated, {speed:.2f} of fp32)"
    )
    support = {
        "fp32": PrecisionSupport(precision="fp32", native=True, vs_fp32=1.0, label="fp32 (native)"),
        "bf16": PrecisionSupport(precision="bf16", native=native, vs_fp32=speed, label=label),
    }
    return support, decide("auto", info)


def precision_record(support: dict[str, PrecisionSupport], auto: Any) -> dict[str, Any]:
    """The JSON form of `precision_support`'s answer."""
    return {
        "auto": auto.precision,
        "auto_reason": auto.reason,
        "support": {p: dataclasses.asdict(s) for p, s in support.items()},
    }


# ---- the benchmarks' model, training step and shards -------------------------------------------------

# transformers' GPT2LMHeadModel as the training benchmarks run it: GPT-2's tanh GELU as one fused op
# ("gelu_new" computes the same function from several) and no KV cache.
HF_KWARGS: dict[str, Any] = dict(activation_function="gelu_pytorch_tanh", use_cache=False)


def gpt_config(args: Any, dropout: float = 0.0) -> Any:
    """The GPTConfig of a benchmark's ``--layers --width --heads`` and ``args.ctx`` positions, ``args.vocab``
    ids (``--seq-len``/``--ctx``, ``--vocab-size``), with every dropout ``dropout``."""
    from model.config import GPTConfig

    return GPTConfig(
        vocab_size=args.vocab,
        n_positions=args.ctx,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        resid_pdrop=dropout,
    )


def add_training_shape_args(p: Any) -> None:
    """``--layers --width --heads --seq-len --micro-batch`` (``args.seq``, ``args.micro``) with the defaults
    the training benchmarks share (train_throughput, startup, data_loading): 4 layers x 256, 4 heads, seq
    256, micro-batch 4."""
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", dest="seq", type=int, default=256, help="tokens per sample")
    p.add_argument("--micro-batch", dest="micro", type=int, default=4, help="sequences per rank and step")


def run_config_model(args: Any) -> dict[str, Any]:
    """The ``model`` section of the run config a training benchmark gives pretrain_gpt.py: its ``--layers
    --width --heads --seq-len`` over the tiny preset (the vocabulary comes from the data), dropout off."""
    return {
        "preset": "tiny",
        "overrides": {
            "n_layer": args.layers,
            "n_embd": args.width,
            "n_head": args.heads,
            "n_positions": args.seq,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "resid_pdrop": 0.0,
        },
    }


def make_step(model: Any, is_hf: bool, precision: str, lr: float = 1e-4) -> Callable[[Any, Any], Any]:
    """Closure running one optimizer step (forward, loss, backward, model.optim's AdamW) on (idx, targets)
    ``[B, T]``, under bf16 autocast for ``precision`` "bf16"; returns the detached loss."""
    import torch

    from model.optim import build_optimizer

    opt = build_optimizer(model, lr=lr, weight_decay=0.1)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def step(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast():
            if is_hf:
                # HF shifts labels itself: labels = idx gives the same next-token task as our targets.
                loss = model(input_ids=idx, labels=idx).loss
            else:
                _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def build_shards(tmp: Path, vocab: int = 8192) -> Path:
    """The training benchmarks' shards, under ``tmp``: the standard library preprocessed with a ``vocab``-id
    tokenizer trained on every fourth file; returns the output directory."""
    from data_tools.preprocess import PreprocessConfig, preprocess
    from data_tools.sources import Problems, SourceConfig, iter_documents
    from data_tools.train_tokenizer import train

    docs = [d.text for d in iter_documents(SourceConfig(), Problems(log=False))]
    train(docs[::4], tmp / "tok", vocab_size=vocab, show_progress=False)
    preprocess(PreprocessConfig(output=tmp / "data", tokenizer=tmp / "tok", show_progress=False, workers=2))
    return tmp / "data"


# ---- printing and the results JSON -------------------------------------------------------------------


class Printer:
    """Prints lines (flushed) and keeps them for the results JSON."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run from the repository root: ``python -m <module> <args>``."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(ROOT)
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([str(python), "-m", module, *args])


def results_path(results_dir: Path, benchmark: str, started: str, tag: str) -> Path:
    """``<dir>/<benchmark>_<UTC date and time>_<cpu tag>.json``."""
    stamp = dt.datetime.fromisoformat(started).strftime("%Y%m%d-%H%M%S")
    return Path(results_dir) / f"{benchmark}_{stamp}_{tag}.json"


class Run:
    """One benchmark run, the harness every benchmark's ``main`` goes through: when it started, the machine
    (described in the first line printed), ``out`` (prints a line and keeps it), and `Run.finish`, which
    writes the results JSON (`finish`) and prints the ratio line last. ``module`` is the benchmark's
    (``bench.model_step``): its last part names the benchmark, ``python -m <module> <argv>`` is the command
    recorded."""

    def __init__(self, module: str, argv: Sequence[str] | None) -> None:
        self.benchmark = module.rpartition(".")[2]
        self.command = command_line(module, argv)
        self.started = now()
        self.out = Printer()
        self.machine = machine_info()
        self.out(describe_machine(self.machine))

    def finish(
        self,
        *,
        figures: dict[str, Any],
        table: list[dict[str, Any]],
        final_line: str,
        precision: dict[str, Any] | None = None,
        results_dir: Path | str | None = None,
    ) -> Path:
        """`finish` for this run: the results JSON's path."""
        return finish(
            self.out,
            benchmark=self.benchmark,
            command=self.command,
            started=self.started,
            machine=self.machine,
            precision=precision,
            figures=figures,
            table=table,
            final_line=final_line,
            results_dir=results_dir or RESULTS_DIR,
        )


def args_record(args: Any) -> dict[str, Any]:
    """A benchmark's arguments for its results JSON's figures (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def finish(
    out: Printer,
    *,
    benchmark: str,
    command: str,
    started: str,
    machine: dict[str, Any],
    precision: dict[str, Any] | None,
    figures: dict[str, Any],
    table: list[dict[str, Any]],
    final_line: str,
    results_dir: Path | str = RESULTS_DIR,
) -> Path:
    """Write the run's results JSON, print where it went, then print ``final_line`` (the ratio: last).

    ``table`` rows hold TABLE_KEYS (bench/report.py renders them); the JSON's ``printed`` holds every line
    printed, ``final_line`` included.
    """
    for row in table:
        missing = [k for k in TABLE_KEYS if k not in row]
        if missing:
            raise ValueError(f"table row {row} lacks {missing}; every row needs {list(TABLE_KEYS)}")
    path = results_path(Path(results_dir), benchmark, started, machine["cpu_tag"])
    resolved = path.resolve()
    shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved
    out(f"results: {shown}")
    record = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "command": command,
        "started": started,
        "finished": now(),
        "machine": machine,
        "precision": precision,
        "figures": figures,
        "table": table,
        "printed": [*out.lines, final_line],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(final_line, flush=True)
    return path
