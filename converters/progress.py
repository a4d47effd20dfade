"""What a user sees during export: one line per stage with its time. The converters' own output
(litert-torch's progress tree, C++ logs, deprecation warnings) goes to a log file that is kept and
named when a stage fails; `--verbose` shows it live instead."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator


class Stages:
    """`log` takes each line (the CLI's prints to stderr; a library caller may pass its own or
    nothing); the converters' own output goes to the log file meanwhile."""

    def __init__(self, verbose: bool = False, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)):
        self.verbose, self.say = verbose, log
        self.console = sys.stderr  # the terminal, for progress bars, even while a stage is captured
        fd, name = tempfile.mkstemp(prefix="edgepack-export-", suffix=".log")
        os.close(fd)
        self.log = Path(name)

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[Callable[[str], None]]:
        """Yields `note(text)`: a remark for the stage's closing line."""
        self.say(f"{what} ...")
        t0 = time.time()
        notes: list[str] = []
        try:
            with self._captured(), self._ticking(what, t0):
                yield notes.append
        except BaseException:
            self.say(f"{what} failed; the converters' output is in {self.log}")
            raise
        self.say(f"{what}: done in {time.time() - t0:.0f} s" + "".join(f" ({n})" for n in notes))

    @contextlib.contextmanager
    def _ticking(self, what: str, t0: float) -> Iterator[None]:
        """On a terminal, the stage's elapsed seconds counted in place (a lowering runs for minutes
        with nothing else to show); nothing in logs and CI."""
        console = self.console
        if self.verbose or not console.isatty():
            yield
            return
        done = threading.Event()

        def tick() -> None:
            while not done.wait(1.0):
                console.write(f"\r{what} ... {time.time() - t0:.0f} s")
                console.flush()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            console.write("\r\033[K")  # the running count gives way to the stage's closing line
            console.flush()

    @contextlib.contextmanager
    def _captured(self) -> Iterator[None]:
        if self.verbose:
            yield
            return
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        self.console = os.fdopen(os.dup(saved[1]), "w")
        # Both levels: C++ logs write to the file descriptors, Python code (litert-torch's progress
        # tree, warnings) to sys.stdout/sys.stderr, which an embedding app may have replaced.
        with open(self.log, "ab") as f, open(self.log, "a", buffering=1) as text, \
                contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                self.console.close()
                self.console = sys.stderr

    def finish(self) -> None:
        """Success: the log has nothing the user needs."""
        self.log.unlink(missing_ok=True)
