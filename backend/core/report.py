"""The validation report: issues with an explicit severity, counts by kind, statistics.

Memory stays bounded on large files: all issues are counted, but only the first
``max_examples`` of each kind are kept with their file, line, sample id and reason; the
statistics are histograms whose size depends on the value ranges, not on the line count.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

#: longest-side buckets (pixels) for the image size distribution
SIDE_BUCKETS = (256, 512, 1024, 2048, 4096, 8192)
#: aspect-ratio (width / height) buckets
ASPECT_BUCKETS = (0.25, 0.5, 0.8, 1.25, 2.0, 4.0)
PERCENTILES = (50, 90, 95, 99)


@dataclass
class Issue:
    severity: Severity
    code: str
    file: str
    line: int  # 1-based; 0 for a problem of the whole file
    sample_id: str | None
    message: str


def _bucket_label(value: float, edges: tuple[float, ...], fmt: str = "{}") -> str:
    lo = None
    for edge in edges:
        if value < edge:
            return f"<{fmt.format(edge)}" if lo is None else f"{fmt.format(lo)}-{fmt.format(edge)}"
        lo = edge
    return f">={fmt.format(edges[-1])}"


def percentile(counter: Counter, q: float) -> int | None:
    """The q-th percentile (nearest rank) of the values a Counter of value -> count holds."""
    total = sum(counter.values())
    if not total:
        return None
    rank = max(1, -(-total * q // 100))  # ceil(total * q / 100)
    seen = 0
    for value in sorted(counter):
        seen += counter[value]
        if seen >= rank:
            return int(value)
    return int(max(counter))


def histogram(counter: Counter, bins: int = 20) -> list[dict]:
    """Equal-width bins over [min, max] of a value Counter: ``[{start, end, count}]``."""
    if not counter:
        return []
    lo, hi = min(counter), max(counter)
    width = max(1, -(-(hi - lo + 1) // bins))
    out = [{"start": lo + k * width, "end": lo + (k + 1) * width, "count": 0}
           for k in range((hi - lo) // width + 1)]
    for value, n in counter.items():
        out[(value - lo) // width]["count"] += n
    return out


@dataclass
class Stats:
    """Partial statistics of the valid samples of a chunk; merged across chunks."""

    samples: int = 0
    images: int = 0
    text_only: int = 0
    multi_image: int = 0
    turns: Counter = field(default_factory=Counter)  # human/gpt rounds per sample
    tiles: Counter = field(default_factory=Counter)  # tiles per image
    tokens: Counter = field(default_factory=Counter)  # total tokens per sample
    text_tokens: int = 0
    image_tokens: int = 0
    token_samples: int = 0
    side: Counter = field(default_factory=Counter)
    aspect: Counter = field(default_factory=Counter)
    min_wh: tuple[int, int] | None = None
    max_wh: tuple[int, int] | None = None

    def add_image(self, width: int, height: int, tiles: int) -> None:
        self.images += 1
        self.tiles[tiles] += 1
        self.side[_bucket_label(max(width, height), SIDE_BUCKETS)] += 1
        self.aspect[_bucket_label(width / height, ASPECT_BUCKETS, "{:g}")] += 1
        if self.min_wh is None or width * height < self.min_wh[0] * self.min_wh[1]:
            self.min_wh = (width, height)
        if self.max_wh is None or width * height > self.max_wh[0] * self.max_wh[1]:
            self.max_wh = (width, height)

    def merge(self, other: Stats) -> None:
        for name in ("samples", "images", "text_only", "multi_image", "text_tokens", "image_tokens",
                     "token_samples"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("turns", "tiles", "tokens", "side", "aspect"):
            getattr(self, name).update(getattr(other, name))
        for wh in (other.min_wh, other.max_wh):
            if wh is not None:
                if self.min_wh is None or wh[0] * wh[1] < self.min_wh[0] * self.min_wh[1]:
                    self.min_wh = wh
                if self.max_wh is None or wh[0] * wh[1] > self.max_wh[0] * self.max_wh[1]:
                    self.max_wh = wh

    def to_dict(self) -> dict:
        tiles_total = sum(k * v for k, v in self.tiles.items())
        tokens = None
        if self.token_samples:
            tokens = {
                "samples": self.token_samples,
                "mean_text": round(self.text_tokens / self.token_samples, 1),
                "mean_image": round(self.image_tokens / self.token_samples, 1),
                "min": min(self.tokens), "max": max(self.tokens),
                "percentiles": {f"p{q}": percentile(self.tokens, q) for q in PERCENTILES},
                "histogram": histogram(self.tokens),
            }
        return {
            "samples": self.samples,
            "images": self.images,
            "text_only_samples": self.text_only,
            "multi_image_samples": self.multi_image,
            "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "tiles_per_image": {str(k): v for k, v in sorted(self.tiles.items())},
            "tiles_total": tiles_total,
            "tokens": tokens,
            "image_sizes": {
                "longest_side": dict(self.side),
                "aspect_ratio": dict(self.aspect),
                "smallest": list(self.min_wh) if self.min_wh else None,
                "largest": list(self.max_wh) if self.max_wh else None,
            },
        }


@dataclass
class Report:
    """What :func:`backend.core.validation.validate_annotation` found in one annotation file."""

    annotation: str
    root: str = ""
    lines: int = 0
    samples: int = 0  # lines without errors
    images: int = 0  # image references of those samples
    issues: list[Issue] = field(default_factory=list)  # the first max_examples of each kind
    counts: Counter = field(default_factory=Counter)  # (severity, code) -> every occurrence
    stats: Stats = field(default_factory=Stats)
    settings: dict = field(default_factory=dict)
    max_examples: int = 20
    #: line numbers that have at least one error (what ``drop_bad_lines`` leaves out)
    error_lines: array = field(default_factory=lambda: array("I"))

    def add(self, issue: Issue) -> None:
        """Count an issue; keep it as an example while its kind has fewer than max_examples."""
        key = (issue.severity, issue.code)
        self.counts[key] += 1
        if self.counts[key] <= self.max_examples:
            self.issues.append(issue)

    def total(self, severity: Severity) -> int:
        return sum(n for (sev, _), n in self.counts.items() if sev == severity)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.total("error") == 0

    def sort_issues(self) -> None:
        rank = {s: k for k, s in enumerate(SEVERITIES)}
        self.issues.sort(key=lambda i: (i.line, rank[i.severity], i.code))

    def to_dict(self) -> dict:
        by_kind: dict[str, dict[str, int]] = {s: {} for s in SEVERITIES}
        for (sev, code), n in sorted(self.counts.items()):
            by_kind[sev][code] = n
        return {
            "annotation": self.annotation,
            "root": self.root,
            "ok": self.ok,
            "lines": self.lines,
            "samples": self.samples,
            "images": self.images,
            "totals": {s: self.total(s) for s in SEVERITIES},
            "by_kind": by_kind,
            "counts": {f"{sev}:{code}": n for (sev, code), n in sorted(self.counts.items())},
            "issues": [asdict(i) for i in self.issues],
            "stats": self.stats.to_dict(),
            "settings": self.settings,
        }


@dataclass
class BundleReport:
    """Several annotation files checked together: a zip's ``.jsonl`` files or a meta file's
    datasets. ``issues`` holds the problems of the bundle itself (a meta entry that points
    nowhere, an archive that cannot be opened)."""

    source: str
    reports: dict[str, Report] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports.values()) and not any(i.severity == "error" for i in self.issues)

    def total(self, severity: Severity) -> int:
        own = sum(1 for i in self.issues if i.severity == severity)
        return own + sum(r.total(severity) for r in self.reports.values())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "ok": self.ok,
            "totals": {s: self.total(s) for s in SEVERITIES},
            "issues": [asdict(i) for i in self.issues],
            "datasets": {name: r.to_dict() for name, r in self.reports.items()},
        }
