"""``clair-vec evaluate --report DIR``: one self-contained HTML page with everything beside it.

``DIR/index.html`` loads only files in ``DIR`` (thumbnails and matplotlib charts, no CDN, no
script): the metrics table, a bar chart per query domain, sample queries with their top-10 hits
framed green (right class) or red (wrong), and the training run's pseudo-label statistics when
the checkpoint recorded them.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from clair_vec.errors import ClairVecError

THUMB = 112
MAX_CHART_DOMAINS = 12  # charts side by side, one a domain
METRICS = ("mAP@all", "mAP@{k}", "P@100", "P@{k}", "mean_pairwise_cosine", "hubness")

CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;max-width:1200px}
img{max-width:100%;height:auto}.wide{overflow-x:auto}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.better{font-weight:bold}
.row{display:flex;gap:6px;align-items:center;margin:6px 0;flex-wrap:wrap}
.q{border:3px solid #333;padding:1px}.hit{border:4px solid;padding:0}.ok{border-color:#2a2}.bad{border-color:#d22}
figure{display:inline-block;margin:0;text-align:center;font-size:11px}figure img{display:block}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:8px}.muted{color:#666}
"""


def _acc(stats: dict[str, Any]) -> str:
    """The pseudo-labels' accuracy, or why there is none (weak supervision: no labeled image)."""
    a = stats.get("pseudo_label_accuracy")
    return f"{a:.2f}" if isinstance(a, (int, float)) and a == a else "unmeasured (no labeled image)"


def _thumb(src: str, out_dir: Path) -> str | None:
    """Copy a small JPEG of ``src`` into ``out_dir/img`` and return its relative path; None when
    ``src`` cannot be read (a results file drawn after its dataset moved)."""
    name = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()[:16] + ".jpg"
    target = out_dir / "img" / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not Path(src).is_file():  # a FIFO would block the report for ever
                return None
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMB, THUMB))
        except (OSError, ValueError, Image.DecompressionBombError):  # missing, unreadable, not an image, or a bomb
            return None
        im.save(target, "JPEG", quality=85)  # a full disk here is the report's failure, not a missing picture
    return f"img/{name}"


def _figure(src: str, out_dir: Path, css: str, width: int, label: str, caption: str) -> str:
    thumb = _thumb(src, out_dir)
    e = html.escape
    if thumb is None:
        return f"<figure class=muted>(image not found)<br>{e(caption)}</figure>"
    return f"<figure><img class='{css}' src='{thumb}' width={width} alt='{e(label)}'>{e(caption)}</figure>"


def _plain_text(draw: Callable[..., str]) -> Callable[..., str]:
    """Draw off-screen, with names taken as written: matplotlib reads ``$...$`` in a title or a
    legend as TeX, so a domain named ``sk$\\x$`` failed the whole report and ``$a$`` came out as math."""

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> str:
        import matplotlib

        matplotlib.use("Agg")
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


@_plain_text
def _bar_chart(result: dict[str, Any], out: Path) -> str:
    import matplotlib.pyplot as plt

    k = result["k"]
    names = [f"mAP@{k}", f"P@{k}", "mAP@all"]
    rows = result["rows"]
    # at most three charts a row keeps the figure inside a 1280 px window at 100 dpi
    cols = min(3, len(rows))
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.8 * cols, 3.2 * lines), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows, strict=False):
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [row["raw_clip"][n] for n in names], 0.4, label="raw CLIP", color="#999")
        ax.bar([i + 0.2 for i in x], [row["model"][n] for n in names], 0.4, label=f"model ({row['shipped']})", color="#2a6fdb")
        if row.get("chance") is not None:
            ax.axhline(row["chance"], color="#d22", linestyle="--", linewidth=1, label=f"chance {row['chance']:.2f}")
        ax.set_xticks(list(x), names)
        ax.set_ylim(0, 1)
        ax.set_title(f"{row['query']} → {row['gallery']}")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)
    return "metrics.png"


@_plain_text
def _training_chart(stats: dict[str, Any], out: Path) -> str:
    import matplotlib.pyplot as plt

    bins = stats["bins"]
    domains = dict(list(stats["domains"].items())[:MAX_CHART_DOMAINS])  # a record edited to hold thousands drew for minutes
    fig, axes = plt.subplots(1, len(domains), figsize=(3.6 * len(domains), 2.8), squeeze=False)
    for ax, (d, s) in zip(axes[0], domains.items(), strict=True):
        ax.bar(bins[:-1], s["confidence_histogram"], width=bins[1] - bins[0], align="edge", color="#2a6fdb", label="confidence")
        ax.step(bins[:-1], s["weight_histogram"], where="post", color="#d22", label="refined weight")
        ax.set_title(f"{d}: pseudo-label acc {_acc(s)}, kept {s['kept_fraction']:.2f}", fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=100)
    plt.close(fig)
    return "training.png"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def filter_summary(record: dict[str, Any]) -> str:
    """How much the pseudo-label confidence filter dropped per domain, from the training record."""
    domains = (record.get("stats") or {}).get("domains") or {}
    parts = [f"{d} dropped {1 - s['kept_fraction']:.0%} (pseudo-label accuracy {_acc(s)})"
             for d, s in domains.items() if isinstance(s.get("kept_fraction"), float)]  # fmt: skip
    return "; ".join(parts)


def selection_section(record: dict[str, Any]) -> str:
    """The per-domain decision: folds, threshold, and per query domain the choice, its gain over raw
    CLIP, the standard error of that gain over the folds and the mean fold scores of each path."""
    e = html.escape
    sel = record["selection"]
    folds = sel.get("folds") or []
    out = [f"<h2>Model selection</h2><p>Shipped: <b>{e(str(record.get('shipped', '?')))}</b>. {e(str(record.get('reason', '')))}</p>"]
    if not folds:
        return "".join(out)
    gallery = "centred per domain" if sel.get("gallery_centered") else "uncentred"
    out.append(f"<p>{len(folds)} folds of the seen classes (held out: "
               f"{e('; '.join(', '.join(f['validation_classes']) for f in folds))}), each trained for the full schedule; "
               f"confidence threshold {e(str(sel.get('threshold', {}).get('chosen')))}; gallery blend "
               f"{sel.get('gallery_blend', 0):g} (0: raw CLIP, 1: the head), {gallery}; margin {sel.get('margin', 0):g}. "
               f"{e(str(sel.get('rule', '')))}.</p>")  # fmt: skip
    out.append("<table><tr><th class=l>query domain</th><th class=l>decision</th><th>blend</th><th>centred</th><th class=l>mapping</th>"
               "<th>gain over raw CLIP</th><th>standard error</th><th>raw CLIP</th><th>B1</th><th>trained</th><th>shipped</th></tr>")  # fmt: skip
    for d, p in sel.get("domains", {}).items():
        means = {m: (sum(v) / len(v) if v else float("nan")) for m, v in p.get("folds", {}).items()}
        out.append(f"<tr><td class=l>{e(d)}</td><td class=l>{'trusted' if p.get('trusted') else 'carried by the model' if p.get('carried') else 'raw CLIP kept'}</td>"
                   f"<td>{p['blend']:g}</td><td>{'yes' if p.get('centered') else 'no'}</td><td class=l>{e(p['mapping'])}</td>"
                   f"<td>{_fmt(p.get('gain'))}</td><td>{_fmt(p.get('stderr'))}</td>"
                   + "".join(f"<td>{_fmt(means.get(m, float('nan')))}</td>" for m in ("raw_clip", "mapping_only", "clair", "chosen"))
                   + "</tr>")  # fmt: skip
    out.append("</table><p class=muted>Scores: mean mAP@200 over the folds' held-out seen classes. Gain and standard error: "
               "mean over folds of (shipped - raw CLIP), and its standard deviation over the square root of the number of "
               "folds.</p>")  # fmt: skip
    return "".join(out)


def check_report_folder(out: Path) -> None:
    """A report is a folder: a file at ``out`` is refused, before any work where the caller checks early."""
    if out.exists() and not out.is_dir():
        raise ClairVecError(f"{out} is a file; the report is a folder (index.html and its images): give a new path")


def write_report(result: dict[str, Any], out_dir: str | Path, *, write_results: bool = True) -> Path:
    """Write the report into ``out_dir`` and return its page. Every file is written whole into a
    hidden folder inside ``out_dir`` first and moved beside the others once all are written, the
    page last: a full disk leaves the folder as it was, not a page without its pictures or a
    picture of 0 bytes. Other files in ``out_dir`` are left alone; a folder this call made is
    removed again when it fails. ``write_results=False`` leaves results.json out (the report of a
    results.json drawn into its own folder must not replace it)."""
    out = Path(out_dir)
    check_report_folder(out)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        _write(result, stage, write_results)
        for f in sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: (p.name == "index.html", str(p))):
            dest = out / f.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    except OSError as exc:
        if exc.errno is None:
            raise
        # the staging folder is gone after this: name the folder the user asked for
        raise OSError(exc.errno, exc.strerror, str(out)) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not any(out.iterdir()):
            out.rmdir()
    return out / "index.html"


def _from_record(section: Callable[[], str], field: str) -> str:
    """A section drawn from clair.json's training record, or a line saying it cannot be: the record
    is evidence for a reader, and one edited by hand must not cost the report its measurements."""
    try:
        return section()
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        return (f"<p class='warn'>The training record in clair.json (field {html.escape(field)}) is not in the form "
                f"clair-vec writes ({html.escape(type(exc).__name__)}); that part of the report is left out.</p>")


def _decision_section(record: dict[str, Any]) -> str:
    e = html.escape
    parts = []
    if record.get("warning"):
        parts.append(f"<p class='warn'>{e(str(record['warning']))}</p>")
    if record.get("selection"):
        parts.append(selection_section(record))
    elif record.get("validation"):  # checkpoints from before the per-domain selection
        v = record["validation"]
        parts.append(f"<p>Shipped: <b>{e(str(record.get('shipped', '?')))}</b> — validation {e(str(v.get('metric', '')))}: "
                     f"trained head {_fmt(v['clair']['mean'])}, raw CLIP + mapping {_fmt(v['mapping_only']['mean'])} "
                     f"(best epoch {e(str(record.get('best_epoch')))}).</p>")  # fmt: skip
    else:
        parts.append(f"<p>Shipped: <b>{e(str(record.get('shipped', '?')))}</b> — "
                     f"{e(str(record.get('reason', 'no validation record')))}</p>")  # fmt: skip
    filt = filter_summary(record)
    if filt:
        parts.append(f"<p>Pseudo-label confidence filter: {e(filt)}.</p>")
    return "".join(parts)


def finite(x: Any) -> Any:
    """NaN and infinities as null: results.json is JSON every parser reads."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def _write(result: dict[str, Any], out: Path, write_results: bool = True) -> None:
    k = result["k"]
    metrics = [m.format(k=k) for m in METRICS]
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>clair_vec evaluation</title><style>{CSS}</style></head><body>",
             "<h1>Zero-shot cross-domain retrieval</h1>",
             f"<p>Model <code>{e(result['model'])}</code>; classes from {e(result['classes_from'])}: "
             f"{e(', '.join(result['rows'][0]['classes'])) if result['rows'] else ''}.</p>"]  # fmt: skip
    record = result.get("record") or {}
    parts.append(_from_record(lambda: _decision_section(record), "decision"))
    head = "".join(f"<th>{e(m)}</th>" for m in metrics)
    parts.append(f"<div class=wide><table><tr><th class=l>query → gallery</th><th class=l>method</th>{head}<th>chance</th>"
                 "<th>queries</th><th>gallery</th></tr>")
    for row in result["rows"]:
        for method, label in (("raw_clip", "raw CLIP"), ("model", f"model ({row['shipped']})")):
            cells = "".join(f"<td>{_fmt(row[method][m])}</td>" for m in metrics)
            parts.append(f"<tr><td class=l>{e(row['query'])} → {e(row['gallery'])}</td><td class=l>{e(label)}</td>{cells}"
                         f"<td>{_fmt(row.get('chance', ''))}</td><td>{row['queries']}</td><td>{row['gallery_size']}</td></tr>")  # fmt: skip
    parts.append("</table></div><p class=muted>mAP@k and P@k as in the UCDR protocol. chance: what a random ranking "
                 "scores (the share of the gallery in the query's class). mean_pairwise_cosine: of "
                 "the query embeddings (near 1 = collapsed). hubness: share of queries whose top-1 is the most common top-1.</p>")
    if result["rows"]:
        parts.append(f"<h2>Per domain</h2><img alt='metrics per query domain' src='{_bar_chart(result, out)}'>")
    parts.append("<h2>Sample queries and their top-10 hits</h2><p class=muted>green: same class as the query; red: another class.</p>")
    for domain, samples in result["samples"].items():
        parts.append(f"<h3>{e(domain)}</h3>")
        for s in samples:
            hits = "".join(_figure(h["path"], out, f"hit {'ok' if h['label'] == s['label'] else 'bad'}", round(THUMB / 1.4),
                                   h["label"], h["label"]) for h in s["hits"])  # fmt: skip
            query = _figure(s["query"], out, "q", THUMB, f"query {s['label']}", f"query: {s['label']}")
            parts.append(f"<div class=row>{query}{hits}</div>")
    stats = record.get("stats") if isinstance(record, dict) else None
    if stats:
        shown = (f" (the first {MAX_CHART_DOMAINS} of {len(stats['domains'])} domains)"
                 if isinstance(stats, dict) and isinstance(stats.get("domains"), dict) and len(stats["domains"]) > MAX_CHART_DOMAINS
                 else "")  # fmt: skip
        parts.append(_from_record(lambda: f"<h2>Training pseudo-labels{shown}</h2><img alt='pseudo-label confidence' "
                                          f"src='{_training_chart(stats, out)}'>", "stats"))  # fmt: skip
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts), encoding="utf-8")
    if write_results:
        (out / "results.json").write_text(json.dumps(finite({k_: v for k_, v in result.items() if k_ != "record"}), indent=2,
                                                     default=str, allow_nan=False))  # fmt: skip
