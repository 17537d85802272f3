"""``python -m watermark``: the ringmark command line."""

from .cli import main

main()
