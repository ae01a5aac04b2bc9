"""Every log call in the package logs an event name (``topic.what_happened``) with fields, never a sentence:
events are found by name, and their values by field, not by parsing prose."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hodei

PACKAGE = Path(hodei.__file__).parent
EVENT = re.compile(r"[a-z_]+(\.[a-z_]+)+")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _is_logger(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return "log" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "log" in node.attr.lower()
    if isinstance(node, ast.Call):  # logging.getLogger("...").info(...)
        return isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
    return False


def _event_argument(call: ast.Call) -> ast.expr | None:
    func = call.func
    if not isinstance(func, ast.Attribute) or not _is_logger(func.value):
        return None
    if func.attr in LEVELS and call.args:
        return call.args[0]
    if func.attr == "log" and len(call.args) >= 2:
        return call.args[1]
    return None


def _names_an_event(argument: ast.expr) -> bool:
    if isinstance(argument, ast.Constant):
        return isinstance(argument.value, str) and EVENT.fullmatch(argument.value) is not None
    if isinstance(argument, ast.JoinedStr):  # f"{topic}.retrying": no sentence in its fixed parts
        fixed = "".join(
            v.value for v in argument.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
        return " " not in fixed and "%" not in fixed
    if isinstance(argument, ast.IfExp):
        return _names_an_event(argument.body) and _names_an_event(argument.orelse)
    return isinstance(argument, ast.Name)  # an event name passed along


def test_every_log_call_names_an_event_rather_than_a_sentence() -> None:
    sentences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            argument = _event_argument(node) if isinstance(node, ast.Call) else None
            if argument is not None and not _names_an_event(argument):
                sentences.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(argument)}")
    assert sentences == []
