"""The ``ringmark`` command line."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ringmark")
def main():
    """Watermark images at generation time and verify them later."""


if __name__ == "__main__":
    main()
