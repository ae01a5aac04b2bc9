"""One way for every settings object to refuse bad values: all problems at once, each naming its field."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["check_settings"]


def check_settings(settings: object, rules: Mapping[str, tuple[str, bool]]) -> None:
    """``rules`` maps a field name to (what it must be, whether it is); raise ValueError listing every breach."""
    problems = [
        f"{name} must be {rule}, got {getattr(settings, name)!r}"
        for name, (rule, ok) in rules.items()
        if not ok
    ]
    if problems:
        raise ValueError(f"invalid {type(settings).__name__}: " + "; ".join(problems))
