"""``python -m tier3.streams`` runs the ``tier3`` command line."""

from tier3.streams.cli.main import main

main()
