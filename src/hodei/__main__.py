"""``python -m hodei`` is the ``hodei`` command (the process provider starts agents this way)."""

from hodei.cli import main

main()
