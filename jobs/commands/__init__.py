"""CLI command groups that are not Ray jobs. Each module has `register(subparsers, formatter)`
and sets `run` handlers; the Ray jobs (jobs/curate.py, jobs/caption.py, jobs/stats.py) register
their commands from their own module."""
