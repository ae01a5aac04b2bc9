"""A scheduler's error quoting client text is printed as it is: a quoted ``[/]`` is not rich markup."""

from __future__ import annotations

import pytest
import typer

from hodei.cli._common import run_against_scheduler
from hodei.errors import WorkerNotFound


async def _refused() -> None:
    raise WorkerNotFound("worker '[/]' is not registered")


def test_an_error_quoting_markup_is_printed_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        run_against_scheduler(_refused())

    assert "error: NOT_FOUND: worker '[/]' is not registered" in capsys.readouterr().err
