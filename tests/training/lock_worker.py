"""A process that contends for a save_dir's run lock, for tests only.

lock_worker.py race SAVE_DIR ROUNDS_DIR ID ROUNDS   in each round, wait on the FIFO ROUNDS_DIR/go-R
                                                    (every contender wakes when the test closes it),
                                                    try the lock, write won/refused to result-R-ID,
                                                    release when release-R appears
lock_worker.py hold SAVE_DIR                        take the lock, print its token, sleep until killed
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.config import ConfigError  # noqa: E402
from training.run_lock import RunLock  # noqa: E402


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.002)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def race(save_dir: Path, rounds_dir: Path, ident: str, rounds: int) -> None:
    for r in range(rounds):
        go = rounds_dir / f"go-{r}"
        _wait_for(go)
        fd = os.open(go, os.O_RDONLY)
        _write(rounds_dir / f"ready-{r}-{ident}", "")
        os.read(fd, 1)  # end of file for every contender at once, when the test closes its end
        os.close(fd)
        lock = RunLock(save_dir)
        try:
            lock.acquire()
            result = f"won {os.getpid()}"
        except ConfigError:
            result = "refused"
        _write(rounds_dir / f"result-{r}-{ident}", result)
        _wait_for(rounds_dir / f"release-{r}")
        lock.release()
        _write(rounds_dir / f"released-{r}-{ident}", "")


def hold(save_dir: Path) -> None:
    lock = RunLock(save_dir)
    lock.acquire()
    print(lock.token, flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    if sys.argv[1] == "race":
        race(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        hold(Path(sys.argv[2]))
