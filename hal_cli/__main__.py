"""``python -m hal_cli`` is ``hal``."""

from hal_cli.commands import app

app()
