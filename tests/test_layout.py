"""The house keeps its shape: no import circle, every package installed, no module too long to read.

Read from the source with ``ast``, nothing imported: an import inside a function counts as much as
one at the top (it is the same dependency, only later), and ``TYPE_CHECKING`` blocks count too.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The folders the product's design fixes, and the package each installs as (pyproject.toml).
FOLDERS = {"model": "digits.model", "worker": "digits.worker", "scripts": "digits.cli"}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if "migrations" in parts:  # Alembic loads these by path; they are not modules
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, resolved to the modules that exist."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from a import b``: b is a module when one exists by that name, else a name in a.
            # For a module, ``a`` is imported first, which is no dependency when ``a`` is a package
            # this module lives in (it is being imported already, and Python allows that).
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t for t in submodules if t in known]
            if len(targets) < len(submodules) or not name.startswith(base + "."):
                targets.append(base)
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_circle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = cycle(graph)
    assert found is None, "import circle: " + " -> ".join(found)


def test_the_walk_sees_the_rooms_and_finds_a_circle():
    """The graph is not vacuous: it holds the known edges, and a circle is found when there."""
    known = modules()
    assert "digits.worker.queue.tasks" in known and "digits.cli.devtools.local" in known
    tasks = imports("digits.worker.queue.tasks", known["digits.worker.queue.tasks"], known)
    assert {"digits.worker.queue.messages", "digits.worker.store.writes"} <= tasks
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    for folder, package in FOLDERS.items():
        assert mapping[package] == folder
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT / folder).parts
            name = ".".join((package, *parts))
            assert name in listed, f"{init.parent.relative_to(ROOT)} is not in pyproject's packages"
    assert not (ROOT / "digits").exists()  # a namespace package: nothing but the three


def test_no_module_is_too_long_to_read():
    long = {}
    for path in modules().values():
        relative = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long[relative] = lines
    assert not long, f"over {MAX_LINES} lines, split by concern: {long}"


def test_a_workers_parent_never_imports_tensorflow():
    """The prefork parent imports the app and its tasks, then forks: TensorFlow started there
    hangs the children, so the models (and Keras) are imported only inside a child."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from digits.worker.queue.celery_app import app\n"
        "app.loader.import_default_modules()\n"
        "import digits.worker.queue.tasks, digits.model.consensus, digits.model.sequence\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr
