"""Build every distribution and install it as a user would: ``make package-check``.

Builds the sdist and wheel of clair-vec, clair-vec-milvus and clair-vec-qdrant (each wheel from
its sdist, so a file missing from the sdist fails here), checks what the wheels carry, then
installs them non-editable into fresh venvs, one per way of installing: the core alone,
``[qdrant]``, ``[milvus]`` and ``[all]``. In each: ``pip check``, the distributions that must
not be there, and a smoke flow in separate processes (train on a generated fixture, index,
search; the core, which has no backend, must refuse ``index`` in one line naming the extra).
Last, pip's resolver is asked whether the declared ranges admit the neighbouring releases of
numpy and Ray. Installs use constraints.txt, the tested set, as ``make install`` does.

Exit 0 when every check holds; otherwise 1, with every failed check listed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTS = {"clair-vec": ROOT, "clair-vec-milvus": ROOT / "plugins" / "clair-vec-milvus",
         "clair-vec-qdrant": ROOT / "plugins" / "clair-vec-qdrant"}  # fmt: skip
HEAVY = ("pymilvus", "milvus-lite", "ray", "fastapi", "matplotlib", "uvicorn", "qdrant-client", "qdrant-edge-py")
# flavour -> (extra, plugin wheels, distributions that must be absent)
FLAVOURS = {
    "core": ("", [], HEAVY),
    "qdrant": ("qdrant", ["clair-vec-qdrant"], ("pymilvus", "milvus-lite", "ray", "fastapi", "matplotlib", "uvicorn")),
    "milvus": ("milvus", ["clair-vec-milvus"], ("qdrant-client", "qdrant-edge-py", "ray", "fastapi", "matplotlib")),
    "all": ("all", ["clair-vec-milvus", "clair-vec-qdrant"], ()),
}
# (requirement, why): each must resolve against the core's declared ranges (numpy 2.4.6 is the
# newest release on the index, so there is no newer one to try: the range is <3)
NEIGHBOURS = [("numpy==2.3.5", "numpy one minor release older"), ("ray[default,train,data]==2.59.0", "Ray one minor release older")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "CLAIR_VEC_PROGRESS": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
ENV.pop("CLAIR_VEC_PLUGINS", None)
ENV.pop("PYTHONPATH", None)

failures: list[str] = []


def check(ok: bool, what: str) -> bool:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures.append(what)
    return ok


def run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def tail(out: subprocess.CompletedProcess, n: int = 1500) -> str:
    return (out.stdout[-n:] + "\n" + out.stderr[-n:]).strip()


def build(dist_dir: Path) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist, of every distribution."""
    wheels = {}
    for name, src in DISTS.items():
        out = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist_dir, src])
        if not check(out.returncode == 0, f"{name}: sdist and wheel build") :
            print(tail(out, 4000))
            continue
        norm = name.replace("-", "_")
        (wheel,) = dist_dir.glob(f"{norm}-*.whl")
        (sdist,) = dist_dir.glob(f"{norm}-*.tar.gz")
        wheels[name] = wheel
        print(f"    {sdist.name}, {wheel.name} ({wheel.stat().st_size // 1024} KiB)")
    return wheels


def check_contents(wheels: dict[str, Path]) -> None:
    for name, wheel in wheels.items():
        files = zipfile.ZipFile(wheel).namelist()
        check(not [f for f in files if f.startswith(("tests/", "test/")) or "/tests/" in f or f.endswith("conftest.py")],
              f"{name}: the wheel carries nothing from the tests")  # fmt: skip
        top = {f.split("/")[0] for f in files if not f.split("/")[0].endswith(".dist-info")}
        expected = {"clair-vec": {"clair_vec"}, "clair-vec-milvus": {"clair_vec_milvus"}, "clair-vec-qdrant": {"clair_vec_qdrant"}}[name]
        check(top == expected, f"{name}: the wheel holds only {sorted(expected)} (found {sorted(top)})")
    if "clair-vec" in wheels:
        files = set(zipfile.ZipFile(wheels["clair-vec"]).namelist())
        for data in ("clair_vec/method/model_configs/clair-tiny.json", "clair_vec/service/web/index.html"):
            check(data in files, f"clair-vec: the wheel carries {data}")
        meta = next(f for f in files if f.endswith(".dist-info/entry_points.txt"))
        text = zipfile.ZipFile(wheels["clair-vec"]).read(meta).decode()
        check("clair-vec = clair_vec.cli:main" in text and "pytest11" in text, "clair-vec: console script and pytest plugin entry points")
    for plugin, module in (("clair-vec-milvus", "milvus = clair_vec_milvus"), ("clair-vec-qdrant", "qdrant = clair_vec_qdrant")):
        if plugin in wheels:
            z = zipfile.ZipFile(wheels[plugin])
            meta = next(f for f in z.namelist() if f.endswith(".dist-info/entry_points.txt"))
            check(module in z.read(meta).decode(), f"{plugin}: registers its backend under the clair_vec entry point group")


def fresh_venv(path: Path) -> Path:
    out = run([sys.executable, "-m", "venv", path])
    assert out.returncode == 0, tail(out)
    return path / "bin"


def smoke(flavour: str, bindir: Path, work: Path, data: Path) -> None:
    py, cli = bindir / "python", bindir / "clair-vec"
    out = run([py, "-c", "import clair_vec, clair_vec.plugin; print(clair_vec.__version__)"], cwd=work)
    check(out.returncode == 0, f"[{flavour}] imports clair_vec and clair_vec.plugin") or print(tail(out))
    out = run([cli, "--help"], cwd=work)
    check(out.returncode == 0 and "usage: clair-vec" in out.stdout, f"[{flavour}] clair-vec --help") or print(tail(out))
    model = work / "model"
    out = run([cli, "train", "--data", data, "--out", model, "--clip-model", "clair-tiny", "--clip-pretrained", "none",
               "--epochs", "2", "--batch-size", "48", "--val-fraction", "0"], cwd=work)  # fmt: skip
    if not check(out.returncode == 0 and (model / "clair.json").is_file(), f"[{flavour}] clair-vec train on a fixture"):
        print(tail(out, 4000))
        return
    sketch = next((data / "sketch").rglob("*.png"))
    if flavour == "core":
        out = run([cli, "index", "--model", model, "--collection", "g", data / "photo"], cwd=work)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        check(out.returncode == 2 and len(lines) == 1 and 'pip install "clair-vec[milvus]"' in lines[0],
              f"[core] index without a backend: one line naming the extra ({lines[-1] if lines else out.returncode!r})")  # fmt: skip
        return
    backend = "qdrant" if flavour == "qdrant" else "milvus"
    uri = work / ("store" if backend == "qdrant" else "gallery.db")
    common = ["--model", model, "--collection", "g", "--backend", backend, "--uri", uri]
    out = run([cli, "index", *common, "--label-from-folder", data / "photo"], cwd=work)
    check(out.returncode == 0, f"[{flavour}] clair-vec index into {backend}") or print(tail(out, 4000))
    out = run([cli, "search", *common, "--domain", "sketch", "--top-k", "3", sketch], cwd=work)  # a new process
    hits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    check(out.returncode == 0 and len(hits) == 1 and len(hits[0].get("hits", [])) == 3,
          f"[{flavour}] clair-vec search in a new process finds 3 hits") or print(tail(out, 4000))  # fmt: skip
    if flavour == "all":
        out = run([py, "-c", "import ray.train.torch, ray.data, ray.serve, fastapi, uvicorn, matplotlib, clair_vec_milvus, "
                   "clair_vec_qdrant"], cwd=work)  # fmt: skip
        check(out.returncode == 0, "[all] Ray Train, Ray Data, Ray Serve, the service and plots import") or print(tail(out))
        out = run([cli, "evaluate", "--model", model, "--data", data, "--report", work / "report"], cwd=work)
        check(out.returncode == 0 and (work / "report" / "index.html").is_file(), "[all] evaluate --report") or print(tail(out))


def install_flavour(flavour: str, wheels: dict[str, Path], work: Path, data: Path) -> None:
    extra, plugins, absent = FLAVOURS[flavour]
    print(f"[{flavour}] fresh venv, pip install {'clair-vec' + (f'[{extra}]' if extra else '')}", flush=True)
    t0 = time.monotonic()
    bindir = fresh_venv(work / "venv")
    core = f"clair-vec[{extra}] @ {wheels['clair-vec'].as_uri()}" if extra else str(wheels["clair-vec"])
    out = run([bindir / "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", core, *(wheels[p] for p in plugins)])
    if not check(out.returncode == 0, f"[{flavour}] installs from the wheels ({time.monotonic() - t0:.0f} s)"):
        print(tail(out, 4000))
        return
    out = run([bindir / "pip", "check"])
    check(out.returncode == 0, f"[{flavour}] pip check is clean") or print(tail(out))
    out = run([bindir / "python", "-c", "import importlib.metadata as m, json; print(json.dumps(sorted(d.metadata['Name'].lower() "
               "for d in m.distributions())))"])  # fmt: skip
    installed = set(json.loads(out.stdout)) if out.returncode == 0 else set()
    there = sorted(installed & set(absent))
    check(not there, f"[{flavour}] none of {list(absent)} installed" + (f" (found {there})" if there else ""))
    smoke(flavour, bindir, work, data)


def check_neighbours(wheels: dict[str, Path], work: Path) -> None:
    """Resolution only (pip's --dry-run): the ranges admit the neighbouring releases."""
    for req, why in NEIGHBOURS:
        extra = "[ray]" if req.startswith("ray") else ""
        core = f"clair-vec{extra} @ {wheels['clair-vec'].as_uri()}"
        out = run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                   work / "report.json", "torch==2.13.0", "torchvision==0.28.0", core, req])  # fmt: skip
        ok = out.returncode == 0
        if ok:
            chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads((work / "report.json").read_text())["install"]}
            name, version = req.split("==")[0].split("[")[0], req.split("==")[1]
            ok = chosen.get(name) == version
        check(ok, f"the core{extra} resolves with {req} ({why})") or print(tail(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavour", action="append", choices=list(FLAVOURS), help="only these venvs (default: all four)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (printed) for a look afterwards")
    p.add_argument("--no-resolve", action="store_true", help="skip the neighbouring-release resolution checks")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clair-vec-packaging-"))
    try:
        print(f"building the distributions (work directory {work})", flush=True)
        wheels = build(work / "dist")
        check_contents(wheels)
        if len(wheels) == len(DISTS):
            data = work / "data"
            out = run([sys.executable, "-c", "import sys; from clair_vec.datasets.shapes import SHAPES, make_shapes_dataset; "
                       "make_shapes_dataset(sys.argv[1], classes=SHAPES[:8], per_class=6, seed=0)", data])  # fmt: skip
            assert out.returncode == 0, tail(out)
            for flavour in args.flavour or list(FLAVOURS):
                (work / flavour).mkdir()
                install_flavour(flavour, wheels, work / flavour, data)
                shutil.rmtree(work / flavour / "venv", ignore_errors=True)  # ~1.5 GB each
            if not args.no_resolve:
                check_neighbours(wheels, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"\n{len(failures)} packaging check(s) failed:\n" + "\n".join(f"  - {f}" for f in failures))
        return 1
    print("\nevery packaging check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
