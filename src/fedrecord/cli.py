"""The ``fedrecord`` command line.  Node commands arrive with the nodes; today: the offline demo."""

from __future__ import annotations

import sys

import click

from fedrecord import __version__


@click.group()
@click.version_option(__version__, prog_name="fedrecord")
def main() -> None:
    """fedrecord: patients keep control of their own health records."""


@main.command()
def demo() -> None:
    """Walk through the main story on the protocol core, offline, narrating each step."""
    from fedrecord.offline_story import StoryFailed, play

    try:
        play(click.echo)
    except StoryFailed as failure:
        click.echo(f"error: the story went wrong: {failure}", err=True)
        sys.exit(1)
