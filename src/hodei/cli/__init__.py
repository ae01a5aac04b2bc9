"""The ``hodei`` command."""

from hodei.cli._app import app, main

__all__ = ["app", "main"]
