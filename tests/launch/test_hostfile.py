"""Hostfiles as the user sees them: what DeepSpeed's runner accepts is accepted with the same hosts and
slots, and every mistake is reported at once with its line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepspeed.launcher.runner import _parse_hostfile

from launch import preflight
from launch.hostfile import HostfileError, HostSlots, parse_hostfile, read_hostfile

ACCEPTED = [
    "node1 slots=2\nnode2 slots=2\n",
    "# two nodes\n\n  node1\tslots=8  \r\nnode2 slots=8 # the second\n",
    "10.0.0.1 slots=1\nnode-2.cluster slots=16 max_slots=16\n",
    "node1 slots=4#no space before the comment\n",
]
# everything the runner refuses (ValueError), refused here too
REFUSED = [
    "",
    "# only a comment\n\n",
    "node1\n",
    "node1 slot=2\n",
    "node1 slots=2\nnode1 slots=2\n",
    "node1 slots=-1\n",
    "node1 slots=+2\n",
    "node1 slots=\n",
    "node1 slots = 2\n",
    "node1:2\n",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepts_what_deepspeed_accepts(text: str) -> None:
    ours = parse_hostfile(text)
    assert {e.host: e.slots for e in ours.entries} == dict(_parse_hostfile(text.splitlines(True)))


@pytest.mark.parametrize("text", REFUSED)
def test_refuses_what_deepspeed_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        _parse_hostfile(text.splitlines(True))
    with pytest.raises(HostfileError):
        parse_hostfile(text)


def test_entries_keep_their_lines() -> None:
    hostfile = parse_hostfile("# cluster\nnode1 slots=2\n\nnode2 slots=3\n")
    assert hostfile.entries == (HostSlots("node1", 2, 2), HostSlots("node2", 3, 4))
    assert hostfile.hosts == ["node1", "node2"]
    assert hostfile.world_size == 5


def test_every_problem_at_once_with_its_line_and_fix() -> None:
    lines = ["# cluster", "node1 slots=2", "node2 slot=2", "node1 slots=1", "node3 slots=two"]
    text = "\n".join([*lines, "node4 slots=0", "node5", "node6:4", ""])
    with pytest.raises(HostfileError) as caught:
        parse_hostfile(text, "hosts")
    assert str(caught.value) == (
        "hostfile hosts has 6 problems:\n"
        "  hosts:3: 'node2 slot=2': expected `hostname slots=N`; write e.g. `node2 slots=2`\n"
        "  hosts:4: 'node1 slots=1': host 'node1' listed again (first on line 2); "
        "list each host once, with all its slots\n"
        "  hosts:5: 'node3 slots=two': slots must be a whole number of at least 1, not 'two'; "
        "write e.g. `node3 slots=1`, or remove the line to leave node3 out\n"
        "  hosts:6: 'node4 slots=0': slots must be a whole number of at least 1, not '0'; "
        "write e.g. `node4 slots=1`, or remove the line to leave node4 out\n"
        "  hosts:7: 'node5': expected `hostname slots=N`; "
        "write `node5 slots=N`, N being the number of ranks on node5\n"
        "  hosts:8: 'node6:4': expected `hostname slots=N`; write e.g. `node6 slots=4`"
    )
    assert [p.line for p in caught.value.problems] == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("text", ["node1 slots=4.5\n", "node1 slots=4x\n", "node1 slots=0\n"])
def test_refuses_counts_deepspeed_would_misread(text: str) -> None:
    """The runner reads `slots=4.5` and `slots=4x` as 4 and gives a `slots=0` host no rank."""
    with pytest.raises(HostfileError, match="slots must be a whole number of at least 1"):
        parse_hostfile(text)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "hosts"
    empty.write_text("# nothing yet\n")
    with pytest.raises(HostfileError) as caught:
        read_hostfile(empty)
    assert str(caught.value) == (
        f"hostfile {empty} has 1 problem:\n"
        f"  {empty}: no hosts (only comments or blank lines); add a line `hostname slots=N` for each host"
    )
    with pytest.raises(HostfileError) as caught:
        read_hostfile(tmp_path / "absent")
    assert str(caught.value) == (
        f"hostfile {tmp_path}/absent has 1 problem:\n"
        f"  {tmp_path}/absent: no such file; pass the path of a file with a line `hostname slots=N` per host"
    )


def test_preflight_reports_a_bad_hostfile_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=1\nnode1 slots=1\n")
    assert preflight.main(["--hostfile", str(hostfile), "--save-dir", str(tmp_path / "ckpt")]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"hostfile {hostfile} has 1 problem:\n"
        f"  {hostfile}:2: 'node1 slots=1': host 'node1' listed again (first on line 1); "
        "list each host once, with all its slots\n"
    )


@pytest.mark.parametrize("tool", ["codeparrot-preflight", "codeparrot-launch"])
@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", None], ids=["binary file", "directory"])
def test_an_unreadable_hostfile_is_one_paragraph_naming_it_and_exit_2(tmp_path, capsys, content, tool):
    from launch import preflight, run

    path = tmp_path / "hosts"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    if tool == "codeparrot-preflight":
        code = preflight.main(["--hostfile", str(path), "--save-dir", str(tmp_path / "ckpt")])
    else:
        code = run.main(["--hostfile", str(path), "--master_port", "29613", "x.py"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"hostfile {path} has 1 problem:" in err and "Traceback" not in err, err
    assert ("not a text file" if content else "a directory, not a file") in err
