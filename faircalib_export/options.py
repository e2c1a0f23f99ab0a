"""CLI options shared by several commands, defined once (typer only: no heavy imports)."""

from __future__ import annotations

from typing import Annotated

import typer

OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace a non-empty OUT that is not this command's kind of artifact "
                        "(it is moved aside to OUT.replaced-TIME, never deleted).")]
