"""The ``hal`` command line: each command fills a flow's parameter model and runs the flow."""

from __future__ import annotations

import typer

app = typer.Typer(help="hal: human-likeness rewards and alignment.", no_args_is_help=True)


if __name__ == "__main__":
    app()
