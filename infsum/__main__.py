"""``python -m infsum``: the same as the ``infsum`` command."""

from .cli import main

main()
