"""``python -m fedrecord``: the command line."""

from fedrecord.cli import main

main()
