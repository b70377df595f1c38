"""``python -m driftd``: the same as the ``driftd`` command."""

from driftd.cli import run

run()
