"""bench.model_step at a toy size end to end, and bench.report on a synthetic results file.

No timing assertions: the figures only have to exist, be positive and agree with each other.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench import model_step, report
from training.precision import DeviceInfo, MatmulFigures, cpu_model_and_flags, decide

TINY = (
    "--layers 1 --width 32 --heads 2 --seq-len 16 --vocab-size 100 --micro-batch 2 --warmup 1 --steps 2 "
    "--rounds 1"
)


def test_model_step_measures_every_precision_and_ends_with_the_ratio(capsys, tmp_path) -> None:
    path = model_step.main([*TINY.split(), "--results-dir", str(tmp_path)])
    printed = capsys.readouterr().out.strip().splitlines()

    assert path.parent == tmp_path and path.name.startswith("model_step_") and path.suffix == ".json"
    record = json.loads(path.read_text())
    for key in ("schema", "benchmark", "command", "started", "finished", "machine", "precision", "figures"):
        assert key in record, key
    machine = record["machine"]
    model, bf16_flags = cpu_model_and_flags()
    assert machine["cpu_model"] == model and machine["bf16_flags"] == list(bf16_flags)
    assert machine["cores"] >= 1 and machine["cpu_tag"] in path.name
    assert set(machine["versions"]) == {"torch", "deepspeed", "transformers", "tokenizers"}
    assert "-m bench.model_step --layers 1" in record["command"]
    assert record["printed"] == printed  # the JSON holds exactly what was printed, the ratio line included

    # Every precision: a line with positive tokens/s for both sides, and a ratio consistent with them.
    precisions = record["figures"]["precisions"]
    assert set(precisions) == {"fp32", "bf16"}
    for p, fig in precisions.items():
        eager = fig["modes"]["eager"]
        assert eager["ours"]["median_tps"] > 0 and eager["hf"]["median_tps"] > 0 and eager["ratio"] > 0
        assert eager["pairs"] == fig["rounds"] * fig["steps"] == len(eager["ours"]["step_s"])
        line = next(x for x in printed if x.startswith(f"{p} eager: "))
        tps = [float(v.replace(",", "")) for v in re.findall(r"(?:ours|hf) ([\d,]+) tok/s", line)]
        assert len(tps) == 2 and all(v > 0 for v in tps), line
        assert f"ratio ours/hf {eager['ratio']:.2f}x" in line

    # The non-native marking is decide()'s verdict on the figures the benchmark measured.
    support = record["precision"]["support"]
    bf16 = support["bf16"]
    figures = MatmulFigures(shape=(1, 1, 1), fp32_gflops=1.0, bf16_gflops=bf16["vs_fp32"], threads=1)
    info = DeviceInfo(device_type="cpu", name=model, cpu_flags=bf16_flags, figures=figures)
    assert bf16["native"] == (decide("bf16", info).warning is None)
    assert record["precision"]["auto"] == decide("auto", info).precision
    label = next(x for x in printed if x.startswith("bf16 ("))
    assert ("not native on this CPU: emulated" in label) == (not bf16["native"])
    assert precisions["bf16"]["reduced"] == (not bf16["native"])
    assert support["fp32"]["native"]

    # Table rows for the README, one per precision.
    assert [r["precision"] for r in record["table"]] == ["fp32", "bf16"]

    auto = record["precision"]["auto"]
    ratio = precisions[auto]["modes"]["eager"]["ratio"]
    expected = f"ratio ours/hf ({auto}, the precision auto picks on this CPU, eager): {ratio:.2f}x"
    assert printed[-1] == expected


def synthetic_results(folder: Path, ratio: float = 1.234) -> Path:
    record = {
        "schema": 1,
        "benchmark": "model_step",
        "command": ".venv/bin/python -m bench.model_step",
        "started": "2026-01-02T03:04:05+00:00",
        "finished": "2026-01-02T03:05:05+00:00",
        "machine": {
            "cpu_model": "Example CPU",
            "cpu_tag": "example-avx2",
            "cpu_flags": "fpu avx avx2",
            "bf16_flags": [],
            "bf16_flags_missing": ["amx_bf16", "avx512_bf16"],
            "torch_cpu_capability": "AVX2",
            "cores": 2,
            "gpu": None,
            "versions": {},
        },
        "precision": {"auto": "fp32"},
        "figures": {},
        "table": [
            {
                "benchmark": "bench/model_step.py",
                "setting": "tiny | eager",
                "precision": p,
                "native": note,
                "baseline": "GPT2LMHeadModel 100 tok/s",
                "ours": "123 tok/s",
                "ratio": ratio,
                "how": "median of pairs",
            }
            for p, note in (("fp32", "native"), ("bf16", "emulated, 0.05 of fp32"))
        ],
        "printed": [],
    }
    path = folder / "model_step_20260102-030405_example-avx2.json"
    path.write_text(json.dumps(record))
    return path


def test_report_renders_the_rows_and_checks_a_readme(capsys, tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    synthetic_results(results)

    block = report.render(report.load(results))
    lines = block.splitlines()
    assert lines[0] == report.BEGIN and lines[-1] == report.END
    rows = [x for x in lines if x.startswith("| `bench/model_step.py`")]
    assert len(rows) == 2
    assert rows[0].split(" | ")[1:] == [
        "tiny \\| eager",  # a | in a cell is escaped
        "Example CPU (no bf16 flags, AVX2), 2 cores",
        "fp32",
        "native",
        "GPT2LMHeadModel 100 tok/s",
        "123 tok/s",
        "1.23x",
        "median of pairs |",
    ]
    assert "| bf16 | emulated, 0.05 of fp32 |" in rows[1]

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Benchmarks\n\nProse.\n\n{block}\n## Layout\n")
    assert report.main(["--results", str(results), "--check", str(readme)]) == 0

    # A newer run of the same rows replaces them: the README is now stale, and --update fixes it.
    newer = json.loads(next(results.glob("*.json")).read_text())
    newer["started"] = "2026-02-01T00:00:00+00:00"
    newer["table"][0]["ratio"] = 2.0
    (results / "model_step_20260201-000000_example-avx2.json").write_text(json.dumps(newer))
    capsys.readouterr()
    assert report.main(["--results", str(results), "--check", str(readme)]) == 1
    assert "+| `bench/model_step.py` | tiny \\| eager" in capsys.readouterr().err
    assert report.main(["--results", str(results), "--update", str(readme)]) == 0
    assert report.main(["--results", str(results), "--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\n## Benchmarks\n\nProse.\n\n") and text.endswith("\n## Layout\n")
    # One row per benchmark x setting x precision x machine: the newer run's.
    assert (
        text.count("| fp32 |") == 1
        and "| fp32 | native | GPT2LMHeadModel 100 tok/s | 123 tok/s | 2.00x |" in text
    )

    readme.write_text("# Title\n\nno markers\n")
    assert report.main(["--results", str(results), "--check", str(readme)]) == 1


def test_readme_benchmark_table_comes_from_the_committed_results():
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "bench.report", "--check", str(root / "docs" / "benchmarks.md")],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
