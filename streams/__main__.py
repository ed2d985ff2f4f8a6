"""``python -m tier3.streams`` runs the ``tier3`` command line."""

from tier3.streams.cli import main

main()
