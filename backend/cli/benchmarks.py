"""``vlstudio benchmarks ...``: the evaluation guide's benchmarks, registered from their release
layouts on shared storage (``backend.core.benchmarks``)."""

from __future__ import annotations

from pathlib import Path

import typer

benchmarks_app = typer.Typer(help="Register and list evaluation benchmarks.", no_args_is_help=True)


def _store() -> Path:
    from backend.settings import get_settings

    return get_settings().data_path / "benchmarks"


@benchmarks_app.command("list")
def list_benchmarks() -> None:
    """The known benchmarks (registered ones marked with their sample count)."""
    import json

    from backend.core.benchmarks import CATALOG

    for name, b in CATALOG.items():
        card = _store() / name / "benchmark.json"
        state = f"registered, {json.loads(card.read_text())['samples']} samples" if card.exists() else "-"
        typer.echo(f"{name:24} {b.title:28} {b.layout:22} {state}")


@benchmarks_app.command("register")
def register(name: str = typer.Argument(..., help="a benchmark of `vlstudio benchmarks list`"),
             path: Path = typer.Argument(..., help="its folder in the guide's layout, e.g. /shared/data/textvqa"),
             replace: bool = typer.Option(False, "--replace", help="replace a registered one")) -> None:
    """Read the benchmark's release layout and register it (all or nothing)."""
    from backend.core.benchmarks import BenchmarkError, register_benchmark

    try:
        card = register_benchmark(name, path, _store(), replace=replace)
    except (BenchmarkError, KeyError) as e:
        typer.echo(str(e).strip("'\""), err=True)
        raise typer.Exit(1) from e
    typer.echo(f"registered {name}: {card['samples']} samples at {_store() / name} (prompt, tiling max "
               f"{card['max_num']}, {card['min_new_tokens']}-{card['max_new_tokens']} new tokens, metrics "
               f"{', '.join(card['metrics'])})")
