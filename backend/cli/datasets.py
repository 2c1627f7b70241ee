"""``vlstudio datasets ...``"""

from __future__ import annotations

from pathlib import Path

import typer

datasets_app = typer.Typer(help="Work with datasets.", no_args_is_help=True)


@datasets_app.command("demo")
def demo(out: Path = typer.Option(Path("shapes-demo.zip"), help="where to write the zip"),
         samples: int = typer.Option(64, min=1)) -> None:
    """Write the coloured-shapes demo dataset as a zip ready to upload."""
    from backend.core.demo_data import write_zip

    write_zip(out, n=samples)
    typer.echo(f"wrote {out} ({samples} samples)")


def _register_validate() -> None:
    # The command lives in its own module (engine wiring, progress bar); registered here so
    # `vlstudio datasets validate` sits beside the other dataset commands.
    from backend.cli.validate_cmd import validate

    datasets_app.command("validate")(validate)


_register_validate()
