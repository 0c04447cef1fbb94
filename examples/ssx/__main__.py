"""``python -m fedcompute_ssx``: the ``ssx`` command group."""

from .cli import main

main()
