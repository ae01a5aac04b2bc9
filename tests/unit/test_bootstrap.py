"""The composition root's store URLs: which URLs open which store, which are refused, and the default URL.

Only what needs no file or database is here; opening SQLite files and PostgreSQL databases is in
``tests/integration/test_open_store.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hodei._bootstrap import default_store_url, open_store
from hodei.stores._memory import MemoryRegistryStore


@pytest.mark.parametrize("url", ["memory", "memory://"])
async def test_memory_opens_a_memory_store_shown_as_memory_with_no_leadership(url: str) -> None:
    opened = await open_store(url)
    try:
        assert isinstance(opened.store, MemoryRegistryStore)
        assert opened.leadership is None
        assert opened.shown == "memory"
    finally:
        await opened.store.close()


SQLITE_FORMS = ("sqlite:///relative/path", "sqlite:////absolute/path")


@pytest.mark.parametrize("url", ["sqlite:/x", "sqlite://x", "sqlite:///", "sqlite:"])
async def test_a_malformed_sqlite_url_is_refused_naming_the_url_and_both_sqlite_forms(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        await open_store(url)

    message = str(refused.value)
    assert repr(url) in message
    assert all(form in message for form in SQLITE_FORMS), message


@pytest.mark.parametrize(
    "url", ["bogus://x", "mysql://user@host/db", "", "registry.db", "/var/lib/registry.db"]
)
async def test_an_unknown_store_url_is_refused_naming_the_url_and_every_expected_form(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        await open_store(url)

    message = str(refused.value)
    assert repr(url) in message
    assert all(form in message for form in ("memory", "sqlite:///", "postgresql://")), message


def test_the_default_store_is_registry_db_in_the_hodei_directory_of_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert default_store_url() == f"sqlite:///{tmp_path}/state/hodei/registry.db"


@pytest.mark.parametrize("xdg_state_home", [None, ""])
def test_without_xdg_state_home_the_default_store_is_under_local_state_of_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg_state_home: str | None
) -> None:
    if xdg_state_home is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg_state_home)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert default_store_url() == f"sqlite:///{tmp_path}/.local/state/hodei/registry.db"
