"""`python -m vsf_cli` runs the command-line tool."""

from vsf_cli.cli import main

main()
