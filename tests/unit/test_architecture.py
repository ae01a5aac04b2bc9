"""The layers as folder facts: the scheduler's core (hodei.scheduler, with the domain, ports, lifecycle and errors it
stands on) imports no gRPC or protobuf and nothing of the adapters (stores, providers, the gRPC server, the transport,
the CLI), directly or through what it imports.

Two views of one fact: the modules a fresh interpreter loads for the core, and every import statement (those
inside functions too, which a fresh import would not run) of every module the core reaches.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hodei

SOURCE = Path(hodei.__file__).parent
CORE = ["hodei.scheduler", "hodei.domain", "hodei.ports", "hodei.lifecycle", "hodei.errors"]
"""The core's roots: every module of hodei.scheduler is reached from its package (checked below)."""
GRPC = ("grpc", "google.protobuf", "google.rpc", "hodei.server", "hodei.transport")
ADAPTERS = ("hodei.stores", "hodei.providers", "hodei.server", "hodei.transport", "hodei.cli")
FORBIDDEN = tuple(sorted({*GRPC, *ADAPTERS}))

# The package's face (hodei/__init__) re-exports the client, so it is left out: what is checked is the core's own
# code, as a process that imports only the core (the package object stands in for the face) loads it.
_LOADED = """
import importlib, importlib.util, json, sys, types
face = types.ModuleType("hodei")
face.__path__ = list(importlib.util.find_spec("hodei").submodule_search_locations)
sys.modules["hodei"] = face
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _path(module: str) -> Path:
    parts = module.split(".")[1:]
    package = SOURCE.joinpath(*parts, "__init__.py")
    return package if package.exists() else SOURCE.joinpath(*parts[:-1], parts[-1] + ".py")


def _imports(module: str) -> set[str]:
    """Every module named by an import statement of ``module`` (anywhere in it), relative ones resolved."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skipped = _for_type_checkers(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            named.add(base)
            # ``from hodei.scheduler import _core`` imports a module, not only a name.
            named.update(f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}"))
    return named


def _for_type_checkers(tree: ast.Module) -> set[ast.AST]:
    """The statements under ``if TYPE_CHECKING:`` — never run, so never an import at run time."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(ast.walk(statement))
    return skipped


def _is_module(name: str) -> bool:
    return name.startswith("hodei.") and _path(name).exists()


def _reached(roots: list[str]) -> dict[str, str]:
    """Every hodei module the roots reach by import statements, each with the module that first imported it
    (parent packages included: importing ``hodei.a.b`` runs ``hodei/a/__init__``; the face ``hodei`` is not)."""
    seen: dict[str, str] = {root: "" for root in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        for name in sorted(_imports(module)):
            parts = name.split(".")
            for depth in range(2, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target not in seen and _is_module(target):
                    seen[target] = module
                    todo.append(target)
    return seen


def _chain(seen: dict[str, str], module: str) -> str:
    chain = [module]
    while seen.get(chain[-1]):
        chain.append(seen[chain[-1]])
    return " <- ".join(chain)


def test_a_process_that_imports_the_core_loads_no_grpc_and_no_adapter() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, *CORE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    assert [name for name in loaded if _within(name, FORBIDDEN)] == []
    # The core it loaded is the whole core: every module of hodei.scheduler is reached from the package.
    scheduler = {f"hodei.scheduler.{path.stem}" for path in (SOURCE / "scheduler").glob("*.py")}
    scheduler.discard("hodei.scheduler.__init__")
    assert scheduler - set(loaded) == set()


@pytest.mark.parametrize("root", CORE)
def test_no_import_statement_the_core_reaches_names_grpc_or_an_adapter(root: str) -> None:
    seen = _reached([root])
    found = [
        f"{_chain(seen, module)} imports {name}"
        for module in sorted(seen)
        for name in sorted(_imports(module))
        if _within(name, FORBIDDEN)
    ]
    assert found == []


def test_the_import_check_sees_what_the_grpc_face_imports() -> None:
    """The check itself: run over the gRPC face, it finds gRPC, the transport and the core."""
    seen = _reached(["hodei.server._servicer"])
    named = {name for module in seen for name in _imports(module)}
    assert {"grpc", "google.protobuf.message", "hodei.transport._codec", "hodei.scheduler._core"} <= named
    assert _chain(seen, "hodei.transport._codec").endswith("hodei.server._servicer")
