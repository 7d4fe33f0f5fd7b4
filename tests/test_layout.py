"""The package layout is the architecture: which part may import which, checked on every import
statement in the tree (module level and inside functions alike), plus no import circles and the
public surface users and plugin authors rely on."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "clair_vec"
BASE = {"clair_vec.errors", "clair_vec.progress", "clair_vec.extras", "clair_vec.file_systems"}
#: part -> the parts it may import (besides itself). Lower parts never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "clair_vec.errors": set(),
    "clair_vec.extras": {"clair_vec.errors"},
    "clair_vec.progress": set(),
    "clair_vec.file_systems": set(),
    "clair_vec.store": BASE,
    "clair_vec.datasets": BASE,
    "clair_vec.method": BASE,
    "clair_vec.ray_runtime": BASE | {"clair_vec.store"},
    "clair_vec.training": BASE | {"clair_vec.method", "clair_vec.datasets", "clair_vec.ray_runtime"},
    "clair_vec.retrieval": BASE | {"clair_vec.method", "clair_vec.datasets", "clair_vec.store", "clair_vec.ray_runtime"},
    "clair_vec.evaluation": BASE | {"clair_vec.method", "clair_vec.datasets", "clair_vec.training"},
    "clair_vec.service": BASE | {"clair_vec.method", "clair_vec.datasets", "clair_vec.store", "clair_vec.retrieval",
                                 "clair_vec.ray_runtime"},  # fmt: skip
    "clair_vec.benchmarks": BASE | {"clair_vec.method", "clair_vec.datasets", "clair_vec.store", "clair_vec.retrieval",
                                    "clair_vec.training", "clair_vec.evaluation", "clair_vec.service"},  # fmt: skip
    "clair_vec.demo": BASE | {"clair_vec.method", "clair_vec.datasets", "clair_vec.store", "clair_vec.retrieval",
                              "clair_vec.training", "clair_vec.evaluation"},  # fmt: skip
    "clair_vec.cli": {"*"},
    # the package itself exposes the API lazily; clair_vec.plugin is the plugin author's one module
    "clair_vec": {"clair_vec.store", "clair_vec.retrieval"},
    "clair_vec.plugin": BASE | {"clair_vec.store"},
}
TORCH = ("torch", "open_clip", "torchvision")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The layout part a module belongs to: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, anywhere in the file, made absolute."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def test_every_module_imports_only_what_its_part_may():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        part = part_of(name)
        assert part in ALLOWED, f"{name}: part {part!r} is not in the layout table; add it to ALLOWED and the README"
        allowed = ALLOWED[part]
        for imp in imports(path):
            if not imp.startswith("clair_vec") or imp not in known and imp.rsplit(".", 1)[0] not in known:
                continue
            target = part_of(imp if imp in known else imp.rsplit(".", 1)[0])
            if target != part and "*" not in allowed and target not in allowed:
                wrong.append(f"{name} imports {imp} ({part} may import {sorted(allowed) or 'nothing of clair_vec'})")
    assert not wrong, "\n".join(wrong)


def test_the_store_and_the_plugins_never_import_torch_or_the_method():
    files = list((PKG / "store").rglob("*.py")) + [p for p in (ROOT / "plugins").rglob("*.py") if "build" not in p.parts]
    wrong = [f"{p.relative_to(ROOT)} imports {imp}" for p in files for imp in imports(p)
             if imp.split(".")[0] in TORCH or imp.startswith(("clair_vec.method", "clair_vec.training"))]  # fmt: skip
    assert not wrong, "\n".join(wrong)
    # and at run time: importing every store module and every built-in plugin loads no torch
    names = [module_name(p) for p in (PKG / "store").rglob("*.py")] + ["clair_vec_milvus", "clair_vec_qdrant", "clair_vec"]
    code = f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\nprint(sorted(m for m in {TORCH!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_import_circles():
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for imp in imports(path):
            target = imp if imp in known else imp.rsplit(".", 1)[0]
            if target in known and target != name and not known[target].name == "__init__.py":
                graph[name].add(target)
    # Tarjan's strongly connected components: any component of two or more modules is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in list(known):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_every_subpackage_says_what_it_owns_and_may_import():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc and len(doc) > 200, f"{init.relative_to(ROOT)} must say what it owns and may import"


#: every name the README, the plugin guide and the CLI help tell people to use
PUBLIC = [
    ("clair_vec", "index"), ("clair_vec", "search"), ("clair_vec", "Retriever"), ("clair_vec", "get_backend"),
    ("clair_vec", "hookimpl"), ("clair_vec", "load_model"), ("clair_vec", "__version__"),
    *[("clair_vec.plugin", n) for n in importlib.import_module("clair_vec.plugin").__all__],
    ("clair_vec.service.ray_serve", "build"), ("clair_vec.extras", "MissingExtraError"),
    ("clair_vec.errors", "StoreLockedError"), ("clair_vec.errors", "CollectionNotFoundError"),
    ("clair_vec.store.ids", "record_id"), ("clair_vec.method.config", "ClairConfig"), ("clair_vec.cli", "main"),
    ("clair_vec.store.pytest_plugin", None),
]  # fmt: skip


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}:{n}" for m, n in PUBLIC])
def test_documented_names_import(module, name):
    mod = importlib.import_module(module)
    if name is not None:
        assert getattr(mod, name) is not None


def test_plugins_import_clair_vec_only_through_the_plugin_module():
    """The built-in backends and the example are what a third party copies: they use only the
    documented plugin API, so everything they need is in it."""
    dists = [d for d in (ROOT / "plugins").iterdir() if (d / "pyproject.toml").is_file()]
    assert {d.name for d in dists} >= {"clair-vec-milvus", "clair-vec-qdrant", "example-numpy"}
    wrong = [f"{p.relative_to(ROOT)} imports {imp}" for d in dists for p in d.rglob("*.py")
             if "build" not in p.parts and "tests" not in p.parts
             for imp in imports(p) if imp.startswith("clair_vec.") and not imp.startswith("clair_vec.plugin")
             or imp == "clair_vec"]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_entry_points_name_modules_that_exist():
    from importlib.metadata import entry_points

    for group, name in (("console_scripts", "clair-vec"), ("pytest11", "clair_vec"), ("clair_vec", "milvus"), ("clair_vec", "qdrant")):
        (ep,) = [e for e in entry_points(group=group) if e.name == name]
        assert ep.load() is not None


@pytest.mark.parametrize("module", ["clair_vec.evaluation.ablation", "clair_vec.evaluation.diagnostics", "clair_vec.datasets.real",
                                    "clair_vec.benchmarks.backends", "clair_vec.benchmarks.service",
                                    "clair_vec.benchmarks.encode", "clair_vec.benchmarks.precision", "clair_vec.benchmarks.ann"])  # fmt: skip
def test_documented_commands_run(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]
    assert f"python -m {module}" in (ROOT / "README.md").read_text() + (PKG / Path(*module.split(".")[1:])).with_suffix(".py").read_text()
