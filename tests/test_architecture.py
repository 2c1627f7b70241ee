"""The direction of the house's imports (docs/architecture.md), read with ``ast`` from the
source (every import statement, at module level or inside a function, counts):

- the backend never imports the worker or the UI, except the command line (``backend.cli``,
  the composition root at the top, which starts all of them);
- the worker never imports the HTTP layer (``backend.api``) nor the UI;
- the UI talks to the backend over HTTP only: it imports neither ``backend`` nor ``worker``;
- the pure core (``backend.core``) imports nothing of the backend but itself, and no web,
  database, queue, UI or torch package;
- the programs a worker launches (``worker.training``, ``worker.evaluation`` but their
  ``launch`` modules) import nothing of the backend but its core;
- no import circle between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("backend", "worker", "ui")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported module or outside name: line}; names inside ``packages`` resolved to
    the deepest module that exists (``from a.b import c`` is ``a.b.c`` when that is a module,
    else ``a.b``); outside names by their top package (``torch``)."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}

    def resolve(name: str) -> str:
        if name.split(".")[0] not in packages:
            return name.split(".")[0]
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        found: dict[str, int] = {}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != mod:
                    found.setdefault(target, node.lineno)
        graph[mod] = found
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_program(mod: str) -> bool:
    return _within(mod, "worker.training", "worker.evaluation") and not mod.endswith(".launch") \
        and mod not in ("worker.training", "worker.evaluation")


def violations(graph: dict[str, dict[str, int]]) -> Iterator[str]:
    for mod, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            where = f"{mod} (line {line}) imports {target}"
            if _within(mod, "backend") and not _within(mod, "backend.cli") and _within(target, "worker", "ui"):
                yield f"{where}: the backend never imports the worker or the UI (only backend.cli does)"
            if _within(mod, "worker") and _within(target, "backend.api", "ui"):
                yield f"{where}: the worker never imports the HTTP layer or the UI"
            if _within(mod, "ui") and _within(target, "backend", "worker"):
                yield f"{where}: the UI talks to the backend over HTTP only"
            if _within(mod, "backend.core") and (
                    (_within(target, "backend") and not _within(target, "backend.core"))
                    or target in ("fastapi", "sqlalchemy", "celery", "gradio", "torch")):
                yield f"{where}: the pure core imports no web, database, queue, UI or torch code"
            if _is_program(mod) and _within(target, "backend") and not _within(target, "backend.core"):
                yield f"{where}: a launched program reads its spec file, it never imports the backend's services"
    for group in circles(graph):
        yield "import circle among: " + ", ".join(group)


def test_the_house_imports_in_one_direction_without_circles():
    problems = list(violations(imports(REPO)))
    assert problems == [], "\n".join(problems)


def test_the_check_finds_a_wrong_direction_and_a_circle(tmp_path):
    """The rules above on a small tree that breaks each of them once."""
    files = {
        "backend/__init__.py": "",
        "backend/core/__init__.py": "",
        "backend/core/a.py": "import sqlalchemy\nfrom backend.services import s\n",
        "backend/services/__init__.py": "",
        "backend/services/s.py": "def f():\n    from worker import w\n",
        "backend/api/__init__.py": "",
        "backend/db/__init__.py": "",
        "backend/cli/__init__.py": "import worker.w\nimport ui.page\n",
        "worker/__init__.py": "",
        "worker/w.py": "from backend.api import routes\nfrom . import x\n",
        "worker/x.py": "from worker.w import thing\n",
        "worker/training/__init__.py": "",
        "worker/training/train.py": "from backend.db import models\n",
        "worker/training/launch.py": "from backend.db import models\n",
        "ui/__init__.py": "",
        "ui/page.py": "import backend.core.a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = list(violations(imports(tmp_path)))
    assert found == [
        "backend.core.a (line 2) imports backend.services.s: the pure core imports no web, database, queue, UI or "
        "torch code",
        "backend.core.a (line 1) imports sqlalchemy: the pure core imports no web, database, queue, UI or torch code",
        "backend.services.s (line 2) imports worker.w: the backend never imports the worker or the UI (only "
        "backend.cli does)",
        "ui.page (line 1) imports backend.core.a: the UI talks to the backend over HTTP only",
        "worker.training.train (line 1) imports backend.db: a launched program reads its spec file, it never imports "
        "the backend's services",
        "worker.w (line 1) imports backend.api: the worker never imports the HTTP layer or the UI",
        "import circle among: worker.w, worker.x",
    ], found
