"""DeepSpeed hostfiles: one `hostname slots=N` per line, `#` comments and blank lines.

    # two nodes, 8 ranks each
    node1 slots=8
    node2 slots=8   # anything after the count is ignored, as DeepSpeed does

What DeepSpeed's runner accepts is accepted here: its `_parse_hostfile` (deepspeed/launcher/runner.py)
searches each stripped line for `^(\\S+)\\s+slots=(\\d+)` and ignores the rest of the line. Every problem is
collected and raised at once, each with its file, line, text and fix. Two lines the runner lets through are
refused because they are surely mistakes: `slots=0` (the host gets no rank) and a count with more characters
glued to it (`slots=4.5`, `slots=4x`, which the runner reads as 4).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ENTRY = re.compile(r"(?P<host>\S+)\s+slots=(?P<slots>\S*)")
COUNT = re.compile(r"(?P<digits>\d+)(?P<rest>.*)")  # the runner's \d+: no sign


@dataclasses.dataclass(frozen=True)
class HostSlots:
    host: str
    slots: int
    line: int  # 1-based line number in the hostfile


@dataclasses.dataclass(frozen=True)
class Hostfile:
    path: str
    entries: tuple[HostSlots, ...]

    @property
    def hosts(self) -> list[str]:
        return [e.host for e in self.entries]

    @property
    def world_size(self) -> int:
        return sum(e.slots for e in self.entries)


@dataclasses.dataclass(frozen=True)
class Problem:
    line: int  # 0 when the problem is the whole file
    text: str  # the offending line, stripped
    what: str
    fix: str

    def describe(self, path: str) -> str:
        where = f"{path}:{self.line}: {self.text!r}" if self.line else path
        return f"{where}: {self.what}; {self.fix}"


class HostfileError(ValueError):
    """Every problem of one hostfile; the message has a line per problem (file:line, text, fix)."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        lines = "".join(f"\n  {p.describe(path)}" for p in problems)
        super().__init__(f"hostfile {path} has {count}:{lines}")


def read_hostfile(path: str | Path) -> Hostfile:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        fix = "pass the path of a file with a line `hostname slots=N` per host"
        raise HostfileError(str(path), [Problem(0, "", "no such file", fix)]) from None
    except IsADirectoryError:
        fix = "pass the hostfile inside it, a file with a line `hostname slots=N` per host"
        raise HostfileError(str(path), [Problem(0, "", "a directory, not a file", fix)]) from None
    except UnicodeDecodeError as e:
        what = f"not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8)"
        fix = "pass a text file with a line `hostname slots=N` per host"
        raise HostfileError(str(path), [Problem(0, "", what, fix)]) from None
    except OSError as e:
        fix = "make it readable by this user"
        raise HostfileError(str(path), [Problem(0, "", f"cannot be read ({e.strerror})", fix)]) from None
    return parse_hostfile(text, str(path))


def parse_hostfile(text: str, path: str = "<hostfile>") -> Hostfile:
    entries: list[HostSlots] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line, number)
        if isinstance(entry, Problem):
            problems.append(entry)
        elif entry.host in first_line:
            what = f"host {entry.host!r} listed again (first on line {first_line[entry.host]})"
            problems.append(Problem(number, line, what, "list each host once, with all its slots"))
        else:
            first_line[entry.host] = number
            entries.append(entry)
    if not entries and not problems:
        fix = "add a line `hostname slots=N` for each host"
        problems.append(Problem(0, "", "no hosts (only comments or blank lines)", fix))
    if problems:
        raise HostfileError(path, problems)
    return Hostfile(path, tuple(entries))


def _parse_line(line: str, number: int) -> HostSlots | Problem:
    m = ENTRY.match(line)
    if m is None:
        # the likely host name (also from MPICH's `host:N`), and a count if the line has one
        named = re.match(r"(?!slots=)[^\s:=]+", line)
        host = named[0] if named else "hostname"
        count = re.search(r"\d+", line[named.end() if named else 0 :])
        if count:
            fix = f"write e.g. `{host} slots={count[0]}`"
        else:
            fix = f"write `{host} slots=N`, N being the number of ranks on {host}"
        return Problem(number, line, "expected `hostname slots=N`", fix)
    host, value = m["host"], m["slots"]
    count = COUNT.fullmatch(value)
    rest = count["rest"] if count else ""
    if count is None or (rest and not rest.startswith("#")) or int(count["digits"]) < 1:
        what = f"slots must be a whole number of at least 1, not {value!r}"
        return Problem(
            number, line, what, f"write e.g. `{host} slots=1`, or remove the line to leave {host} out"
        )
    return HostSlots(host, int(count["digits"]), number)
