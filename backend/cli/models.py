"""``vlstudio models ...``"""

from __future__ import annotations

import typer

from backend.settings import get_settings

models_app = typer.Typer(help="Work with models.", no_args_is_help=True)


@models_app.command("build-demo")
def build_demo() -> None:
    """Build the tiny demo model now (otherwise the worker builds it on first use)."""
    from worker.demo_model import ensure_demo_model

    s = get_settings()
    s.ensure_dirs()
    path = ensure_demo_model(s.data_path / "models")
    typer.echo(f"demo model at {path}")
