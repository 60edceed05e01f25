"""Progress bars that are only drawn on a terminal.

A live bar redraws itself with carriage returns; written to a file or a pipe every redraw
stays, and a 40-epoch training log grows to hundreds of kilobytes of bar lines. On a
terminal the bar is shown; elsewhere callers print one summary line per epoch (or per
stage) instead, which they do anyway.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default: stderr, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress_bar(total: int, desc: str, initial: int = 0, stream: TextIO | None = None) -> Any:
    """A tqdm bar on a terminal, else None (the caller's per-epoch line is the log)."""
    if not on_terminal(stream):
        return None
    return tqdm(total=total, initial=initial, leave=False, desc=desc, file=stream or sys.stderr)
