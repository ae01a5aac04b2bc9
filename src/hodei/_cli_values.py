"""Values of the command line's options that more than one command group parses."""

from __future__ import annotations

import typer

__all__ = ["parse_label", "parse_labels"]


def parse_label(item: str) -> tuple[str, str]:
    """``k=v`` -> ("k", "v")."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"label {item!r} is not KEY=VALUE")
    return key, value


def parse_labels(text: str) -> dict[str, str]:
    """``a=1,b=2`` -> {"a": "1", "b": "2"}."""
    return dict(parse_label(item) for item in filter(None, (part.strip() for part in text.split(","))))
