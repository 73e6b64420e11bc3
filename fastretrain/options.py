"""Method options in the `-o METHOD.FIELD=VALUE` syntax, parsed for the CLI, config files and benchmark labels."""
from __future__ import annotations

import ast

from .errors import FastRetrainError


def parse_value(text: str):
    """A Python literal (2, 0.5, None, [0.5], 'x') where the text is one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(items: list[str] | None) -> dict[str, dict]:
    """['rifle.period=2', 'mp-refine.lam=0.5'] -> {'rifle': {'period': 2}, 'mp-refine': {'lam': 0.5}}."""
    out: dict[str, dict] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not (eq and dot and method and name):
            raise FastRetrainError(f"bad option {item!r}: expected METHOD.FIELD=VALUE, e.g. rifle.period=2")
        out.setdefault(method, {})[name.replace("-", "_")] = parse_value(value)
    return out
