"""``diceloss eval ... --report DIR``: an HTML page to look at, with the PNGs it shows.

``DIR/index.html`` holds the summary table (mean, std, median, n per label and metric), per label a box plot
of each metric over the cases and the worst cases (lowest Dice, highest HD95, with their values), a
histogram of HD95 per label, the definitions used (every metric option eval ran with, the surface-distance
definition among them when eval has one, and the definitions of the component, lesion-wise and topology
metrics asked for: connectivity, matching rule and threshold, skeleton method) and the failed cases. Every
metric asked for, these families included, gets its box plot. The page is self-contained: images by
relative path, no script, no network; every text that comes from a file name or an error is escaped.

matplotlib (Agg backend) draws the plots; it is optional: :func:`check` says, before any case is scored,
when it is missing or when ``DIR`` cannot be written.
"""

from __future__ import annotations

import html
import math
import os

import numpy as np

PAGE = "index.html"
N_WORST = 5

# what the options mean, for the definitions table; an option not listed here is shown by its name
_OPTION_TEXT = {
    "labels": "labels scored (none: every label present in either map, background 0 left out)",
    "include_background": "label 0 scored when no labels are given",
    "ignore_index": "ground-truth value whose voxels are left out of both maps",
    "metrics": "metrics computed",
    "spacing": "voxel size per axis given on the command line (none: from each file, else 1)",
    "tolerance": "NSD tolerance, in the spacing's units",
    "empty": "scores of a label absent from both maps (dice, iou, precision, recall, nsd)",
    "empty_distance": "hd / hd95 / assd of a label present in one map only",
    "surface": "surface definition (voxel: boundary voxels, as MONAI; surfel: surface elements, as DeepMind)",
    "percentile": "HD95 percentile (directed: per direction, then the larger, as MONAI; pooled: as medpy)",
    "backend": "distance transform",
    "connectivity": "components of cc_dice, lesion-wise and Betti metrics (full: 8 / 26 neighbours; face: 4 / 6)",
    "lesion_match": "lesion matching rule (iou: intersection over union; overlap: any shared voxel)",
    "lesion_threshold": "IoU a predicted and a reference lesion must exceed to match (one-to-one)",
    "lesion_inclusive": "match at IoU >= the threshold instead of >",
}
_SKIP_OPTIONS = {"known_errors", "npz_key", "metric_definitions"}


def check(path: str) -> str | None:
    """Why ``--report path`` cannot be written (one line), or None; creates the folder when missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "needs matplotlib to draw its plots: pip install matplotlib"
    if os.path.exists(path) and not os.path.isdir(path):
        return f"expected a folder to write, got the file {path!r}"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        return f"could not create the folder {path!r} ({err.strerror or err})"
    page = os.path.join(path, PAGE)
    if os.path.isdir(page):
        return f"expected {PAGE} in {path!r} to be a file, it is a folder"
    if not os.access(path, os.W_OK | os.X_OK) or (os.path.exists(page) and not os.access(page, os.W_OK)):
        return f"expected a writable folder, got {path!r} (not writable)"
    return None


def _fmt(x) -> str:
    if x is None:
        return "none"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.4g}" if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-3) else f"{x:.4f}".rstrip("0").rstrip(".")
    if isinstance(x, (list, tuple)):
        return ", ".join(_fmt(v) for v in x) or "none"
    return str(x)


def _e(x) -> str:
    return html.escape(_fmt(x))


def _values(results, label: int, metric: str) -> list[tuple[str, float]]:
    return [(r.name, float(r.metrics[label][metric])) for r in results
            if r.error is None and label in r.metrics and metric in r.metrics[label]]


def _box_plot(path: str, results, label: int, metrics) -> None:
    import matplotlib.pyplot as plt

    ncols = min(len(metrics), 5)
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.7 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, m in zip(axes.flat, metrics):
        v = np.array([x for _, x in _values(results, label, m)], dtype=np.float64)
        finite = v[np.isfinite(v)]
        n_inf = int(np.isinf(v).sum())
        if finite.size:
            ax.boxplot(finite, widths=0.5, showfliers=False)
            ax.scatter(1 + rng.uniform(-0.12, 0.12, finite.size), finite, s=10, alpha=0.6, color="tab:blue",
                       zorder=3)
        else:
            ax.text(0.5, 0.5, "no finite value", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        note = f"n={finite.size}" + (f", {n_inf} inf" if n_inf else "")
        ax.set_title(m, fontsize=10)
        ax.set_xticks([1], [note], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"label {label}: each metric over the cases", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _histogram(path: str, results, label: int) -> None:
    import matplotlib.pyplot as plt

    v = np.array([x for _, x in _values(results, label, "hd95")], dtype=np.float64)
    finite = v[np.isfinite(v)]
    n_inf = int(np.isinf(v).sum())
    fig, ax = plt.subplots(figsize=(5, 2.8))
    if finite.size:
        ax.hist(finite, bins=min(30, max(5, finite.size)), color="tab:orange", edgecolor="black", linewidth=0.5)
    else:
        ax.text(0.5, 0.5, "no finite value", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("HD95 (spacing units)" + (f"; {n_inf} case(s) inf, not shown" if n_inf else ""), fontsize=9)
    ax.set_ylabel("cases", fontsize=9)
    ax.set_title(f"label {label}: HD95 over {finite.size} case(s)", fontsize=10)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _worst(results, label: int, metric: str, highest: bool) -> list[tuple[str, float]]:
    vals = [(n, x) for n, x in _values(results, label, metric) if not math.isnan(x)]
    vals.sort(key=lambda t: (-t[1] if highest else t[1], t[0]))
    return vals[:N_WORST]


def _table(head: list[str], rows: list[list[str]], cls: str, num: tuple[int, ...] = ()) -> str:
    """An HTML table of already escaped cells; the columns in ``num`` are right-aligned numbers."""
    def cell(tag, i, text):
        return f'<{tag} class="num">{text}</{tag}>' if i in num else f"<{tag}>{text}</{tag}>"

    out = [f'<table class="{cls}">', "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(head))
           + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows]
    out.append("</tbody></table>")
    return "\n".join(out)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 70em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
img { display: block; max-width: 100%; margin: 0.5em 0; }
.worst { display: inline-block; vertical-align: top; margin-right: 2em; }
.failed td { color: #a00; }
"""


def write(path: str, results, summary: dict, labels: list[int], opts: dict, unmatched=(), pred: str = "",
          gt: str = "") -> str:
    """Write ``path/index.html`` and its PNGs; return the page's path. ``results`` are eval's case results
    (``name``, ``metrics`` label -> metric -> value, ``spacing``, ``error``); ``summary`` is eval's table."""
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(path, exist_ok=True)
    metrics = list(opts.get("metrics") or ())
    scored = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>diceloss eval report</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>diceloss eval report</h1>",
        f"<p>Prediction <code>{_e(pred)}</code> against ground truth <code>{_e(gt)}</code>: "
        f"scored {len(scored)} of {len(results)} case(s), {len(failed)} failed; labels {_e(list(labels))}.</p>",
    ]

    # summary table
    parts.append('<h2 id="summary">Summary per label</h2>')
    parts.append("<p>Mean, standard deviation and median over the scored cases; NaN is left out (n counts the "
                 "cases with a value), inf is kept.</p>")
    rows = []
    for c, per_metric in summary.items():
        for i, (m, s) in enumerate(per_metric.items()):
            rows.append([_e(c) if i == 0 else "", _e(m), *(_e(float(s[k])) for k in ("mean", "std", "median")),
                         _e(s["n"])])
    parts.append(_table(["label", "metric", "mean", "std", "median", "n"], rows, "summary", num=(2, 3, 4, 5)))

    # per label: box plots, worst cases, HD95 histogram
    for c in labels:
        parts.append(f'<h2 id="label-{_e(c)}">Label {_e(c)}</h2>')
        if metrics and scored:
            name = f"label_{c}_boxplots.png"
            _box_plot(os.path.join(path, name), results, c, metrics)
            parts.append(f'<img src="{html.escape(name)}" alt="box plots of each metric for label {_e(c)}">')
        worst = []
        for m, highest, what in (("dice", False, "lowest Dice"), ("hd95", True, "highest HD95")):
            if m in metrics:
                vals = _worst(results, c, m, highest)
                rows = [[html.escape(n), _e(x)] for n, x in vals]
                table = _table(["case", m], rows, "worst", num=(1,))
                worst.append(f'<div class="worst"><h3>{what}</h3>{table}</div>')
        if worst:
            parts.append("<div>" + "".join(worst) + "</div>")
        if "hd95" in metrics and scored:
            name = f"label_{c}_hd95_hist.png"
            _histogram(os.path.join(path, name), results, c)
            parts.append(f'<img src="{html.escape(name)}" alt="histogram of HD95 for label {_e(c)}">')

    # definitions
    parts.append('<h2 id="definitions">Definitions used</h2>')
    rows = [[html.escape(k), _e(v), html.escape(_OPTION_TEXT.get(k, ""))]
            for k, v in opts.items() if k not in _SKIP_OPTIONS]
    spacings = sorted({tuple(r.spacing) for r in scored if getattr(r, "spacing", None)})
    if spacings:
        shown = "; ".join(f"({_fmt(list(s))})" for s in spacings[:10]) + (" ..." if len(spacings) > 10 else "")
        rows.append(["spacing used", html.escape(shown), "voxel sizes the cases were scored with"])
    parts.append(_table(["option", "value", "meaning"], rows, "definitions"))
    parts.append("<p>Distances (hd, hd95, assd) are in the units of the spacing. hd95 is the 95th percentile of "
                 "the surface distances, nsd the fraction of surface within the tolerance.</p>")
    families = opts.get("metric_definitions") or {}
    if families:  # component, lesion-wise and topology metrics: connectivity, matching rule, skeleton method
        parts.append(_table(["metric family", "definition"],
                            [[html.escape(k), html.escape(v)] for k, v in families.items()], "families"))

    # failures
    parts.append('<h2 id="failed">Failed cases</h2>')
    if failed:
        parts.append(_table(["case", "reason"], [[html.escape(r.name), html.escape(r.error)] for r in failed],
                            "failed"))
    else:
        parts.append("<p>None: every case was scored.</p>")
    if unmatched:
        parts.append(f"<p>Prediction(s) without ground truth, not scored: {html.escape(', '.join(unmatched))}</p>")
    parts.append("</body></html>")
    page = os.path.join(path, PAGE)
    with open(page, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return page
