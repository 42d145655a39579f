"""``python -m otel_runs``: the ``otel-runs`` command line."""

from .cli import main

main()
