"""``python -m flows.cli ARGS`` == ``reviewflow ARGS`` (e.g. on a GPU box: ``python -m flows.cli train --no-prefect``)."""

from flows.cli import main

main()
