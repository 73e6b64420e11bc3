"""Errors that the CLI turns into one clear line and a non-zero exit."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class FastRetrainError(Exception):
    """A problem with the user's input or run, reported as one line (no traceback) by the CLI."""


class NonFiniteLossError(FastRetrainError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> FastRetrainError:
    """An error for an unknown `kind` name that lists the closest known names."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return FastRetrainError(f"unknown {kind} {name!r}{hint}")
