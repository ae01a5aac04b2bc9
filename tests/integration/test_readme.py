"""The README's examples as a new user runs them: the Python example as written, against a real scheduler; the
security example never puts a token on a command line."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from hodei.testing import EmbeddedScheduler
from tests.integration.helpers import CLI_ENV

README = Path(__file__).parents[2] / "README.md"


def block(after: str, language: str) -> str:
    """The first fenced ``language`` block of the README after the line ``after``."""
    text = README.read_text()
    start = text.index(after)
    found = re.search(rf"^```{language}\n(.*?)^```$", text[start:], re.MULTILINE | re.DOTALL)
    assert found is not None, f"no {language} block after {after!r}"
    return found.group(1)


async def test_the_python_example_registers_and_decommissions_a_worker_as_written(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(block("## Using it", "python"))
    async with EmbeddedScheduler() as scheduler:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(example),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
            env=CLI_ENV | {"HODEI_SCHEDULER": scheduler.target},
        )  # fmt: skip
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        left = await scheduler.workers()
    files = sorted(await asyncio.to_thread(os.listdir, tmp_path))

    assert process.returncode == 0, stderr.decode()
    [registered, decommissioned] = stdout.decode().splitlines()
    worker_id = registered.removesuffix(" registered")
    assert decommissioned == f"{worker_id} decommissioned"
    assert left == []
    assert files == ["example.py"]  # it leaves nothing behind where it ran


def test_the_security_example_passes_tokens_through_the_environment_never_the_command_line() -> None:
    commands = block("#### Security", "sh")

    assert "--join-token" not in commands
    assert re.search(r"--token(?!-file)\b", commands) is None
    assert "HODEI_JOIN_TOKEN=$(" in commands and "export HODEI_TOKEN=$(" in commands
    # Keys and certificates go out of the repository.
    assert re.search(r"(token secret|pki init) (?!\"\$conf/)", commands) is None
