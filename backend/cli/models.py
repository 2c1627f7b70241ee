"""``vlstudio models ...``: import released InternVL checkpoints, export fine-tuned ones."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from backend.settings import get_settings

models_app = typer.Typer(help="Work with models.", no_args_is_help=True)


def _db_ready() -> None:
    """Migrations applied and built-in models registered, as at the API's start."""
    from backend.db.migrate import upgrade_to_head
    from backend.db.session import session_scope
    from backend.services.models import ensure_builtin_models

    s = get_settings()
    s.ensure_dirs()
    upgrade_to_head()
    with session_scope() as sess:
        ensure_builtin_models(sess, s)


def _progress():  # noqa: ANN202
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())


@models_app.command("build-demo")
def build_demo() -> None:
    """Build the tiny demo model now (otherwise the worker builds it on first use)."""
    from worker.demo_model import ensure_demo_model

    s = get_settings()
    s.ensure_dirs()
    path = ensure_demo_model(s.data_path / "models")
    typer.echo(f"demo model at {path}")


@models_app.command("list")
def list_models() -> None:
    """The registered models."""
    from backend.db.session import session_scope
    from backend.services.models import list_models as _list

    _db_ready()
    with session_scope() as s:
        for m in _list(s):
            typer.echo(f"{m.id:4d}  {m.name:40s} {m.family:10s} {m.template:15s} {m.path}")


@models_app.command("info")
def info(path: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint folder"),
         as_json: bool = typer.Option(False, "--json", help="print the facts as JSON")) -> None:
    """What a checkpoint folder is, before any conversion: format, family, template, parameter
    counts by part, tiling settings. Reads data files only; needs no database."""
    from backend.core.model_folder import ModelFolderError
    from backend.core.model_summary import describe, summarize

    try:
        facts = summarize(path)
    except ModelFolderError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(facts, indent=2) if as_json else "\n".join(describe(facts)))


@models_app.command("import")
def import_model(path: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint folder"),
                 name: str = typer.Option(None, help="registry name; default: the folder's name")) -> None:
    """Convert an original InternVL checkpoint (or check a native -hf one) and register it.

    Code shipped in the folder is never executed."""
    from backend.db.session import session_scope
    from backend.services.errors import DomainError
    from backend.services.models import import_model as _import
    from worker.convert import import_checkpoint

    s = get_settings()
    _db_ready()
    with _progress() as bar:
        task = bar.add_task(f"importing {path.name}", total=None)
        try:
            with session_scope() as sess:
                m = _import(sess, s, path, name, None, import_checkpoint,
                            lambda done, total, _n: bar.update(task, completed=done, total=total))
                model_id, info = m.id, m.info
        except DomainError as e:
            typer.echo(f"error: {e.message}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"registered model {model_id} {m.name}: {info['family']}, template {info['template']}, "
               f"{info['param_count']:,} parameters, {info['dtype']}")


def _resolve_source(ref: str) -> tuple[Path, Path | None]:
    """``job:N`` (a job's final model), ``model:N`` or ``N`` (a registered model) -> (native folder,
    the original folder it was imported from, if known)."""
    from backend.db.session import session_scope
    from backend.services import jobs as jobs_svc
    from backend.services import models as models_svc

    _db_ready()
    kind, _, num = ref.partition(":") if ":" in ref else ("model", "", ref)
    if not num.isdigit() or kind not in ("job", "model"):
        raise typer.BadParameter("expected job:N, model:N or N", param_hint="JOB_OR_MODEL")
    with session_scope() as sess:
        if kind == "job":
            job = jobs_svc.get_job(sess, int(num))
            if not job.run_dir or not (Path(job.run_dir) / "final" / "config.json").exists():
                raise typer.BadParameter(f"job {num} has no final model", param_hint="JOB_OR_MODEL")
            model = models_svc.get_model(sess, job.model_id)
            src = Path(job.run_dir) / "final"
        else:
            model = models_svc.get_model(sess, int(num))
            src = Path(model.path)
        original = (model.info or {}).get("source_path")
        if original and (model.info or {}).get("source_format") != "original":
            original = None
    return src, Path(original) if original else None


@models_app.command("export")
def export(ref: str = typer.Argument(..., metavar="JOB_OR_MODEL", help="job:N, model:N or N"),
           fmt: str = typer.Option("hf", "--format", help="original | hf"),
           out: Path = typer.Option(..., "--out", help="destination folder (must not exist)")) -> None:
    """Write a model (or a job's fine-tuned result) in InternVL's original layout or the native one."""
    from worker.convert import ConversionError, export_model

    if fmt not in ("original", "hf"):
        raise typer.BadParameter("original or hf", param_hint="--format")
    src, original = _resolve_source(ref)
    with _progress() as bar:
        task = bar.add_task(f"exporting {ref}", total=None)
        try:
            res = export_model(src, out, fmt, original,
                               progress=lambda done, total, _n: bar.update(task, completed=done, total=total))
        except ConversionError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(json.dumps({"path": res.path, "format": res.format}))
