"""A dependency-free progress bar for training loops: one updating line in a terminal, one
line per step elsewhere (notebooks, logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """`bar.update(step, **figures)` after each step; `bar.close()` at the end.

    Example::

        bar = ProgressBar(total=10, description="round")
        for round_number in range(1, 11):
            ...
            bar.update(round_number, loss=0.31)
        bar.close()
    """

    def __init__(self, total: int, description: str = "", stream: Optional[TextIO] = None, width: int = 24):
        self.total = total
        self.description = description
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self.last = self.start
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, step: int, **figures: float) -> str:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        filled = int(self.width * step / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        shown = " ".join(f"{name}={value:.4g}" for name, value in figures.items())
        line = f"{self.description} {step}/{self.total} [{bar}] {shown} {seconds:.2f}s/step"
        if self.interactive:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
        self.stream.write(f"{self.description}: {self.total} steps in {time.perf_counter() - self.start:.1f}s\n")
        self.stream.flush()
