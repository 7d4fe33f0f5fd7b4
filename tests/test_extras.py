"""A command that needs an optional part that is not installed says, in one line, which extra
installs it, and exits 2 before doing any work. Each case hides the part in a fresh process, as a
venv without that extra lacks it (the packaging check runs the real thing: tests/package_check.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUN_HIDING = textwrap.dedent("""
    import json, runpy, sys
    hide, dists, argv = json.loads(sys.argv[1])
    for name in hide:  # `import name` now fails as it does where the package is not installed
        sys.modules[name] = None
    if dists:  # the backend distributions named are not installed: their entry points are gone
        import importlib.metadata as md
        from clair_vec.store import plugins
        plugins.entry_points = lambda group: [e for e in md.entry_points(group=group) if e.dist.name not in dists]
    if argv[0].endswith(".py"):
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    else:
        from clair_vec.cli import main
        sys.exit(main(argv))
""")


def run_hiding(hide: list[str], dists: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    import json

    env = {**os.environ, "CLAIR_VEC_PLUGINS": ""}
    return subprocess.run([sys.executable, "-c", RUN_HIDING, json.dumps([hide, dists, argv])], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)  # fmt: skip


CASES = {
    "milvus": ([], ["clair-vec-milvus"], ["index", "--collection", "g", "--model", "{model}", "{image}"]),
    "qdrant": ([], ["clair-vec-qdrant"], ["search", "--backend", "qdrant", "--collection", "g", "--model", "{model}",
                                          "--domain", "sketch", "{image}"]),
    "ray": (["ray"], [], [str(ROOT / "ray_jobs" / "train.py"), "--data", "{data}", "--clip-pretrained", "none"]),
    "serve": (["fastapi"], [], ["serve", "--model", "{model}", "--collection", "g", "--uri", "{tmp}/g.db"]),
    "report": (["matplotlib"], [], ["evaluate", "--model", "{model}", "--data", "{data}", "--report", "{tmp}/report"]),
    "test": (["pytest", "_pytest"], [], ["backends", "--check", "qdrant", "--uri", "{tmp}/store"]),
}


@pytest.mark.parametrize("extra", list(CASES))
def test_a_missing_extra_is_named_with_its_install_command(extra, model_dir, shapes_root, tmp_path):
    hide, dists, argv = CASES[extra]
    image = next((shapes_root / "photo").rglob("*.png"))
    values = {"model": str(model_dir), "image": str(image), "data": str(shapes_root), "tmp": str(tmp_path)}
    out = run_hiding(hide, dists, [a.format(**values) for a in argv])
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f'pip install "clair-vec[{extra}]"' in lines[0], lines[0]
    assert "error:" in lines[0]
    assert not any(tmp_path.iterdir()), "nothing is written before the check"


def test_an_installed_backend_is_never_reported_as_a_missing_extra(model_dir, tmp_path):
    """The extras line is only for backends that are absent; an unknown name keeps its own message."""
    out = run_hiding([], [], ["search", "--backend", "milvsu", "--collection", "g", "--model", str(model_dir), "--uri",
                              str(tmp_path / "g.db"), "--text", "a cat"])  # fmt: skip
    assert out.returncode == 2 and "did you mean 'milvus'" in out.stderr and "pip install" not in out.stderr, out.stderr
