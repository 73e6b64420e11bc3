"""Errors that the CLI turns into one clear line and a non-zero exit, and warnings printed as one line."""
from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class FastRetrainError(Exception):
    """A problem with the user's input or run, reported as one line (no traceback) by the CLI."""


class NonFiniteLossError(FastRetrainError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class FastRetrainWarning(UserWarning):
    """Something odd in the user's input that does not stop the run (printed as `warning: <message>`)."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> FastRetrainError:
    """An error for an unknown `kind` name that lists the closest known names."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return FastRetrainError(f"unknown {kind} {name!r}{hint}")


_plain_format = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None) -> str:
    """`warning: <message>` on one line for the package's warnings (a FastRetrainWarning, or any warning raised
    from a file of the package); other libraries' warnings keep Python's format (file, line, source line)."""
    ours = issubclass(category, FastRetrainWarning) or os.path.abspath(filename).startswith(PACKAGE_DIR + os.sep)
    if not ours:
        return _plain_format(message, category, filename, lineno, line)
    return "warning: " + " ".join(str(message).split("\n")) + "\n"


def install_warning_format() -> None:
    """Print the package's warnings as `format_warning` does (`import fastretrain` calls it, so the CLI does)."""
    warnings.formatwarning = format_warning
