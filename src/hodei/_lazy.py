"""Names a package exports but imports only when first asked for: a module ``__getattr__`` (PEP 562).

So that ``import hodei`` (or ``hodei.stores``, ``hodei.providers``, ``hodei.observability``) stays light and
never imports the docker SDK or the asyncpg driver, while ``from hodei.stores import PostgresRegistryStore``
works as any import does. The package also imports the names under ``TYPE_CHECKING``, for type checkers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package`` that imports each name of ``modules`` (name -> the module that defines
    it) on first use; any other name is an ``AttributeError``, as for a module without one."""

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(modules[name]), name)

    return __getattr__
