"""``vlstudio datasets validate``: the validation engine on the command line.

Registered by the CLI app as ``datasets_app.command("validate")(validate)``. Exit status:
0 no errors, 1 errors found (or the input could not be read), 2 bad arguments (model
folder, template), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, TextIO

import typer

from backend.core.model_card import read_card
from backend.core.model_folder import ModelFolderError, load_tokenizer, require_image_tokens
from backend.core.presets import PRESETS, check_tiling
from backend.core.report import BundleReport, Report
from backend.core.sources import rows_file, validate_path
from backend.core.templates import TemplateError
from backend.core.validation import ValidationCancelled, ValidationSettings, drop_bad_lines, settings_for


class ProgressBar:
    """A one-line progress bar on a terminal (silent when stderr is not one)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        rate = done / max(now - self.start, 1e-9) / 2**20
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r[{bar:<30}] {frac:6.1%}  {done / 2**20:,.1f}/{total / 2**20:,.1f} MB  {rate:,.1f} MB/s")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _settings(model: Path | None, template: str | None, max_dynamic_patch: int | None, max_seq_length: int | None,
              truncation: str, full_decode: bool, preset: str | None = None) -> tuple[ValidationSettings, object]:
    """The model's card (template, tiling, geometry) and tokenizer; the preset's tiling and an
    explicit tile budget over the card's."""
    tokenizer = None
    card = None
    if model is not None:
        card = read_card(model)
        tokenizer = load_tokenizer(model)
        require_image_tokens(tokenizer)
    try:
        tiling, source = check_tiling(card, preset, max_dynamic_patch, model=model.name if model else None)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return settings_for(card, template=template, tiling=tiling, tiling_source=source, max_seq_length=max_seq_length,
                        truncation=truncation, full_decode=full_decode), tokenizer


@contextlib.contextmanager
def _interrupt_sets(cancel: threading.Event):
    """Ctrl-C (SIGINT) sets ``cancel``: the engine stops after the chunks in flight (a fraction of
    a second) and the command prints what it has, instead of a KeyboardInterrupt unwinding through
    the worker pool; a second Ctrl-C interrupts at once. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):  # noqa: ARG001
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _print_report(name: str, r: Report, examples: int, out: TextIO) -> None:
    tot = {s: r.total(s) for s in ("error", "warning", "info")}
    out.write(f"{name}: {r.lines:,} lines, {r.samples:,} valid samples, {r.images:,} images; "
              f"{tot['error']:,} error(s), {tot['warning']:,} warning(s), {tot['info']:,} info\n")
    for (sev, code), n in sorted(r.counts.items()):
        out.write(f"  {sev:7} {code:18} {n:>9,}\n")
        for i in [i for i in r.issues if (i.severity, i.code) == (sev, code)][:examples]:
            where = f"line {i.line}" if i.line else "file"
            sid = f" [id {i.sample_id}]" if i.sample_id is not None else ""
            out.write(f"      {where}{sid}: {i.message}\n")
    st = r.stats.to_dict()
    if st["tiles_per_image"]:
        out.write(f"  tiles per image: {st['tiles_per_image']}\n")
    if st["tokens"]:
        t = st["tokens"]
        out.write(f"  tokens per sample: min {t['min']:,}, p50 {t['percentiles']['p50']:,}, "
                  f"p95 {t['percentiles']['p95']:,}, max {t['max']:,}\n")


def write_report(bundle: BundleReport, dest: Path, rows_dir: Path | None) -> None:
    """The report as JSON, each dataset with its ``per_sample`` rows streamed from disk."""
    data = bundle.to_dict()
    marks = {}
    for k, name in enumerate(bundle.reports):
        mark = f"@@per_sample_{k}@@"
        data["datasets"][name]["per_sample"] = mark
        marks[json.dumps(mark)] = name
    text = json.dumps(data, indent=1, ensure_ascii=False)
    with open(dest, "w", encoding="utf-8") as out:
        pos = 0
        for mark, name in marks.items():
            at = text.index(mark, pos)
            out.write(text[pos:at] + "[")
            src = rows_file(rows_dir, name) if rows_dir else None
            first = True
            if src is not None and src.is_file():
                with open(src, encoding="utf-8") as rows:
                    for row in rows:
                        out.write(("\n" if first else ",\n") + row.rstrip("\n"))
                        first = False
            out.write("]")
            pos = at + len(mark)
        out.write(text[pos:] + "\n")


def run_validate(path: Path, root: Path | None = None, model: Path | None = None, template: str | None = None,
                 max_dynamic_patch: int | None = None, max_seq_length: int | None = None, truncation: str = "error",
                 report: Path | None = None, write_clean: Path | None = None, workers: int | None = None,
                 full_decode: bool = False, examples: int = 3, out: TextIO | None = None,
                 err: TextIO | None = None, preset: str | None = None) -> int:
    """The command's logic, callable from tests; returns the exit status."""
    out = out or sys.stdout  # looked up at call time: test runners swap the streams
    err = err or sys.stderr
    try:
        settings, tokenizer = _settings(model, template, max_dynamic_patch, max_seq_length, truncation, full_decode,
                                        preset)
    except (ModelFolderError, TemplateError, ValueError) as e:
        err.write(f"error: {e}\n")
        return 2
    if write_clean is not None and path.suffix.lower() != ".jsonl":
        err.write("error: --write-clean works on a single .jsonl file\n")
        return 2
    bar = ProgressBar(err, err.isatty())
    cancel = threading.Event()
    with tempfile.TemporaryDirectory(prefix="vlstudio-report-") as tmp, _interrupt_sets(cancel):
        rows_dir = Path(tmp) if report is not None else None
        try:
            bundle = validate_path(path, root, settings=settings, tokenizer=tokenizer, workers=workers,
                                   progress=bar, cancel=cancel, per_sample_dir=rows_dir)
        except (KeyboardInterrupt, ValidationCancelled) as e:
            cancel.set()
            bar.finish()
            partial = getattr(e, "report", None)
            if partial is not None:  # what was checked before Ctrl-C
                out.write(f"interrupted: partial summary of the first {partial.lines:,} lines\n")
                _print_report(partial.annotation, partial, examples, out)
            err.write("interrupted\n")
            return 130
        bar.finish()
        for issue in bundle.issues:
            out.write(f"{issue.severity}: {issue.message}\n")
        for name, r in bundle.reports.items():
            _print_report(name, r, examples, out)
        if report is not None:
            write_report(bundle, report, rows_dir)
            out.write(f"report written to {report}\n")
    if write_clean is not None and bundle.reports:
        (r,) = bundle.reports.values()
        try:
            n = drop_bad_lines(path, r, write_clean)
        except FileExistsError as e:
            err.write(f"error: {e}\n")
            return 2
        out.write(f"{n:,} good line(s) written to {write_clean}; {path} is unchanged\n")
    out.write("OK\n" if bundle.ok else "FAILED: fix the errors above (or --write-clean to drop the bad lines)\n")
    return 0 if bundle.ok else 1


def validate(
    path: Annotated[Path, typer.Argument(help="a .zip, a .jsonl (images relative to its folder) or a meta .json")],
    root: Annotated[Path | None, typer.Option(help="images root of a .jsonl; base folder of a meta file's "
                                                    "relative paths (default: the current folder)")] = None,
    model: Annotated[Path | None, typer.Option(help="model folder: template, tiling and tokenizer for token "
                                                     "counts")] = None,
    template: Annotated[str | None, typer.Option(help="conversation template (default: the model's)")] = None,
    preset: Annotated[str | None, typer.Option(help="check with the tiling this training preset uses on the model "
                                                    f"({', '.join(PRESETS)})")] = None,
    max_dynamic_patch: Annotated[int | None, typer.Option(min=1, help="tile budget per sample (default: the "
                                                                      "preset's, else the model's, else 12)")] = None,
    max_seq_length: Annotated[int | None, typer.Option(min=1, help="longest sample allowed, in tokens")] = None,
    truncation: Annotated[str, typer.Option(help="'error': over-long samples are errors; 'truncate': warnings "
                                                 "when the cut keeps images whole")] = "error",
    report: Annotated[Path | None, typer.Option(help="write the full report (with per-sample rows) as JSON")] = None,
    write_clean: Annotated[Path | None, typer.Option(help="write the lines without errors to this new file")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="processes for the checks (default: all cores)")] = None,
    full_decode: Annotated[bool, typer.Option(help="decode every image fully (slow)")] = False,
    examples: Annotated[int, typer.Option(min=0, help="examples shown per kind of issue")] = 3,
) -> None:
    """Check a dataset before training: JSON schema, roles, <image> tags, image files, tiles and token lengths."""
    code = run_validate(path, root, model, template, max_dynamic_patch, max_seq_length, truncation, report,
                        write_clean, workers, full_decode, examples, preset=preset)
    raise typer.Exit(code)
