"""``diceloss eval PRED GT``: score predicted label maps against ground truth, per case and label.

PRED and GT are two files, or two folders whose files are matched by name without the extension
(``case_01.nii.gz`` in one matches ``case_01.npy`` in the other). Every case gets the metrics of
:mod:`diceloss.metrics.surface` per label; the terminal shows a summary per label (mean, std, median and the
number of cases with a value); ``--csv`` / ``--json`` write every case. A case that cannot be read,
whose shapes differ, or that has no prediction fails with a one-line reason, the others still run,
and the exit code is 1 (0 when every case was scored; 2 for bad arguments).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from .. import io as dio
from ..metrics import surface

DESCRIPTION = """\
Score predicted label maps against ground truth, per case and label: dice, iou, precision, recall,
avd, rvd, hd, hd95, assd, nsd (distances in the units of the voxel spacing).

PRED and GT are two files or two folders; folder files are matched by name without the extension.
Formats: .npy, .npz, .png, .tif, .nii, .nii.gz. A case that cannot be read, whose shapes differ, or
that has no prediction fails with a one-line reason; the others still run. Exit code: 0 when every
case was scored, 1 when some failed, 2 for bad arguments."""

EPILOG = """\
empty masks (--empty, --empty-distance):
  label absent from both: dice, iou, precision, recall, nsd = 1 ("one", default), 0 ("zero") or NaN
  ("nan"); avd, rvd = 0 (NaN under "nan"); hd, hd95, assd = NaN. Label in one only: dice = iou = nsd = 0;
  hd, hd95, assd = inf (default), NaN, or the image diagonal ("diagonal"). NaN is left out of the means
  (the n column counts the cases with a value). In the JSON file NaN is null and infinity "inf".

examples:
  diceloss eval preds/ labelsTs/ --csv scores.csv --jobs 4
  diceloss eval pred.nii.gz gt.nii.gz --labels 1-3 --tolerance 2 --metrics dice,hd95,nsd
"""


class UsageError(Exception):
    """Bad arguments or paths: exit code 2."""


def _parse_labels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    labels: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if re.fullmatch(r"-?\d+", part):
            labels.append(int(part))
            continue
        m = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        if not m or int(m.group(1)) > int(m.group(2)):
            raise UsageError(f"--labels: expected integers or ranges like 1,2,5-7; got {part!r}")
        labels.extend(range(int(m.group(1)), int(m.group(2)) + 1))
    if not labels:
        raise UsageError(f"--labels: expected at least one label, got {text!r}")
    return sorted(set(labels))


def _parse_spacing(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in re.split(r"[,x ]+", text.strip()) if v)
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"--spacing: expected positive numbers like 0.8,0.8,3 (or one number); got {text!r}")
    return values


def _parse_metrics(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return surface.METRICS
    names = tuple(n for n in text.replace(" ", "").split(",") if n)
    bad = [n for n in names if n not in surface.METRICS]
    if bad or not names:
        valid = ", ".join(surface.METRICS)
        raise UsageError(f"--metrics: expected names from {valid} (or all); got {text!r}")
    return names


@dataclass
class Case:
    name: str
    pred: str | None
    gt: str | None


@dataclass
class CaseResult:
    name: str
    pred: str | None
    gt: str | None
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    error: str | None = None
    warning: str | None = None


def find_cases(pred: str, gt: str) -> tuple[list[Case], list[str], dict[str, str]]:
    """(cases, predictions without ground truth, case -> error known before reading)."""
    for name, path in (("PRED", pred), ("GT", gt)):
        if not os.path.exists(path):
            raise UsageError(f"{name} {path!r} does not exist")
    if os.path.isfile(pred) and os.path.isfile(gt):
        stem = dio.split_extension(os.path.basename(gt))[0]
        return [Case(stem, pred, gt)], [], {}
    if not (os.path.isdir(pred) and os.path.isdir(gt)):
        raise UsageError(f"PRED and GT must be two files or two folders; got {pred!r} and {gt!r}")
    preds, pred_dupes = dio.index_folder(pred)
    gts, gt_dupes = dio.index_folder(gt)
    errors: dict[str, str] = {}
    for kind, dupes in (("prediction", pred_dupes), ("ground truth", gt_dupes)):
        for stem, paths in dupes.items():
            listed = ", ".join(os.path.basename(p) for p in paths)
            errors[stem] = f"several {kind} files for one case: {listed}"
    names = sorted(set(gts) | set(gt_dupes))
    cases = []
    for stem in names:
        if stem not in errors and stem not in preds and stem not in pred_dupes:
            errors[stem] = f"no prediction: no file named {stem}.* in {pred}"
        cases.append(Case(stem, preds.get(stem), gts.get(stem)))
    no_gt = (set(preds) | set(pred_dupes)) - set(gts) - set(gt_dupes)
    extra = sorted(os.path.basename(f) for s in no_gt for f in ([preds[s]] if s in preds else pred_dupes[s]))
    if not names and not extra:
        raise UsageError(f"no label maps ({', '.join(dio.EXTENSIONS)}) in {gt!r} or {pred!r}")
    return cases, extra, errors


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (dio.ReadError, ValueError)) else f"{type(err).__name__}: {text}"


def evaluate_case(case: Case, opts: dict) -> CaseResult:
    """Read and score one case; every error becomes ``result.error`` (one line)."""
    res = CaseResult(case.name, case.pred, case.gt)
    try:
        pred = dio.read_label_map(case.pred, key=opts["npz_key"])
        gt = dio.read_label_map(case.gt, key=opts["npz_key"])
        if pred.array.shape != gt.array.shape:
            shapes = f"prediction {tuple(pred.array.shape)} vs ground truth {tuple(gt.array.shape)}"
            raise ValueError(f"shape mismatch: {shapes}")
        res.shape = tuple(int(n) for n in gt.array.shape)
        ndim = gt.array.ndim
        spacing = opts["spacing"] or gt.spacing or pred.spacing or (1.0,) * ndim
        if len(spacing) == 1:
            spacing = spacing * ndim
        if len(spacing) != ndim:
            raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {ndim}D image")
        if (opts["spacing"] is None and gt.spacing and pred.spacing
                and not np.allclose(gt.spacing[:ndim], pred.spacing[:ndim], rtol=1e-3)):
            res.warning = (f"spacing differs: prediction {pred.spacing} vs ground truth {gt.spacing}; "
                           "used the latter")
        res.spacing = tuple(float(s) for s in spacing[:ndim])
        res.metrics = surface.segmentation_metrics(
            pred.array, gt.array, labels=opts["labels"], metrics=opts["metrics"], spacing=res.spacing,
            tolerance=opts["tolerance"], ignore_index=opts["ignore_index"],
            include_background=opts["include_background"], empty=opts["empty"],
            empty_distance=opts["empty_distance"], backend=opts["backend"],
        )
    except Exception as err:  # one bad case must not stop the others
        res.error = _one_line(err)
    return res


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="case", file=sys.stderr, disable=None, leave=False)
        except ImportError:
            pass

    class _Silent:
        def update(self, n=1):
            pass

        def write(self, text, file=None):
            print(text, file=file or sys.stderr)

        def close(self):
            pass

    return _Silent()


def _init_worker() -> None:
    # the processes are the parallelism: one torch thread each, no oversubscription
    import torch

    torch.set_num_threads(1)


def run_cases(cases: list[Case], opts: dict, jobs: int, progress: bool) -> list[CaseResult]:
    bar = _progress(len(cases), progress)
    results: dict[str, CaseResult] = {}

    def done(res: CaseResult) -> None:
        results[res.name] = res
        if res.error:
            bar.write(f"{res.name}: failed: {res.error}", file=sys.stderr)
        elif res.warning:
            bar.write(f"{res.name}: warning: {res.warning}", file=sys.stderr)
        bar.update(1)

    todo = []
    for case in cases:
        if case.name in opts["known_errors"]:
            done(CaseResult(case.name, case.pred, case.gt, error=opts["known_errors"][case.name]))
        else:
            todo.append(case)
    if jobs > 1 and len(todo) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        workers = min(jobs, len(todo))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(evaluate_case, case, opts): case for case in todo}
            for fut in as_completed(futures):
                case = futures[fut]
                try:
                    done(fut.result())
                except Exception as err:  # a worker that died (e.g. out of memory)
                    done(CaseResult(case.name, case.pred, case.gt, error=f"worker failed: {_one_line(err)}"))
    else:
        for case in todo:
            done(evaluate_case(case, opts))
    bar.close()
    return [results[c.name] for c in cases]


def _fill_absent_labels(results: list[CaseResult], opts: dict) -> list[int]:
    """Default labels are those present in each case; a label seen elsewhere but absent from both
    maps of a case gets the both-empty values there, so that every case has every label."""
    scored = [r for r in results if r.error is None]
    labels = sorted({c for r in scored for c in r.metrics})
    if opts["labels"] is None:
        blank = surface.empty_metrics(opts["metrics"], empty=opts["empty"])
        for r in scored:
            for c in labels:
                r.metrics.setdefault(c, dict(blank))
            r.metrics = dict(sorted(r.metrics.items()))
    return labels


def summarize(results: list[CaseResult], labels: list[int], metrics: tuple[str, ...]) -> dict:
    """label -> metric -> {mean, std, median, n} over the scored cases, NaN left out (inf kept)."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    scored = [r for r in results if r.error is None]
    for c in labels:
        out[c] = {}
        for m in metrics:
            v = np.array([r.metrics[c][m] for r in scored if c in r.metrics], dtype=np.float64)
            v = v[~np.isnan(v)]
            if v.size:
                with np.errstate(invalid="ignore"):
                    stats = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v))}
            else:
                stats = {"mean": math.nan, "std": math.nan, "median": math.nan}
            out[c][m] = {**stats, "n": int(v.size)}
    return out


def _fmt(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.4g}" if abs(x) >= 1e5 else f"{x:.4f}"


def format_table(summary: dict) -> str:
    lines = [f"{'label':>6}  {'metric':<10}{'mean':>12}{'std':>12}{'median':>12}{'n':>6}"]
    for c, per_metric in summary.items():
        for i, (m, s) in enumerate(per_metric.items()):
            lab = str(c) if i == 0 else ""
            lines.append(f"{lab:>6}  {m:<10}{_fmt(s['mean']):>12}{_fmt(s['std']):>12}{_fmt(s['median']):>12}"
                         f"{s['n']:>6}")
    return "\n".join(lines)


def _json_value(x):
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {str(k): _json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_value(v) for v in x]
    return x


def write_csv(path: str, results: list[CaseResult], metrics: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "label", *metrics, "error"])
        for r in results:
            if r.error is not None:
                w.writerow([r.name, "", *([""] * len(metrics)), r.error])
                continue
            for c, vals in r.metrics.items():
                w.writerow([r.name, c, *(repr(float(vals[m])) for m in metrics), ""])


def write_json(path: str, results, summary, unmatched, opts, args) -> None:
    doc = {
        "pred": args.pred,
        "gt": args.gt,
        "options": {k: opts[k] for k in ("labels", "metrics", "spacing", "tolerance", "ignore_index",
                                         "include_background", "empty", "empty_distance")},
        "cases": [
            {"case": r.name, "pred": r.pred, "gt": r.gt, "shape": r.shape, "spacing": r.spacing,
             "warning": r.warning, "metrics": r.metrics}
            for r in results if r.error is None
        ],
        "failed": [
            {"case": r.name, "pred": r.pred, "gt": r.gt, "reason": r.error} for r in results if r.error
        ],
        "unmatched_predictions": unmatched,
        "summary": summary,
    }
    with open(path, "w") as f:
        json.dump(_json_value(doc), f, indent=1, allow_nan=False)
        f.write("\n")


def run(args: argparse.Namespace) -> int:
    try:
        opts = {
            "labels": _parse_labels(args.labels),
            "metrics": _parse_metrics(args.metrics),
            "spacing": _parse_spacing(args.spacing),
            "tolerance": float(args.tolerance),
            "ignore_index": args.ignore_index,
            "include_background": bool(args.include_background),
            "empty": args.empty,
            "empty_distance": args.empty_distance,
            "backend": args.backend,
            "npz_key": args.npz_key,
        }
        if not (math.isfinite(opts["tolerance"]) and opts["tolerance"] >= 0):
            raise UsageError(f"--tolerance: expected a number >= 0, got {args.tolerance}")
        if args.jobs < 1:
            raise UsageError(f"--jobs: expected a number >= 1, got {args.jobs}")
        if opts["labels"] and opts["ignore_index"] in opts["labels"]:
            raise UsageError(f"--labels must not contain --ignore-index {opts['ignore_index']}")
        cases, unmatched, known = find_cases(args.pred, args.gt)
    except UsageError as err:
        print(f"diceloss eval: error: {err}", file=sys.stderr)
        return 2
    opts["known_errors"] = known
    if unmatched:
        print(f"{len(unmatched)} prediction(s) without ground truth, not scored: {', '.join(unmatched)}",
              file=sys.stderr)
    results = run_cases(cases, opts, args.jobs, not args.no_progress)
    labels = _fill_absent_labels(results, opts)
    summary = summarize(results, labels, opts["metrics"])
    failed = [r for r in results if r.error]
    n_ok = len(results) - len(failed)
    print(f"scored {n_ok} of {len(results)} case(s); labels {', '.join(map(str, labels)) or 'none'}")
    if summary:
        print(format_table(summary))
    if args.csv:
        write_csv(args.csv, results, opts["metrics"])
    if args.json:
        write_json(args.json, results, summary, unmatched, opts, args)
    if failed:
        print(f"{len(failed)} case(s) failed:")
        for r in failed:
            print(f"  {r.name}: {r.error}")
        return 1
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="score predicted label maps against ground truth (Dice, IoU, HD95, ASSD, NSD, ...)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred", metavar="PRED", help="predicted label map, or a folder of them")
    p.add_argument("gt", metavar="GT", help="ground-truth label map, or a folder of them (matched by name)")
    p.add_argument("--labels", help="labels to score, e.g. 1,2,5-7 (default: every label present in either, "
                                    "without background 0)")
    p.add_argument("--include-background", action="store_true",
                   help="also score label 0 when --labels is not given")
    p.add_argument("--ignore-index", type=int, default=None,
                   help="ground-truth value whose voxels are left out of both maps (e.g. 255)")
    p.add_argument("--spacing", help="voxel size per axis, e.g. 0.8,0.8,3 (default: from the NIfTI header "
                                     "or a 'spacing' array in the .npz, else 1)")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="NSD tolerance in the spacing's units (default 1)")
    p.add_argument("--metrics", default=",".join(surface.DEFAULT_METRICS),
                   help=f"comma-separated, from {', '.join(surface.METRICS)}, or all "
                        f"(default: all but hd)")
    p.add_argument("--csv", metavar="FILE", help="write one row per case and label")
    p.add_argument("--json", metavar="FILE", help="write every case, the failures and the summary")
    p.add_argument("--jobs", type=int, default=1, help="cases scored in parallel (processes; default 1)")
    p.add_argument("--empty", choices=surface.EMPTY_POLICIES, default="one",
                   help="scores of a label absent from both maps (default one)")
    p.add_argument("--empty-distance", choices=surface.EMPTY_DISTANCES, default="inf",
                   help="hd/hd95/assd of a label in one map only (default inf)")
    p.add_argument("--backend", choices=surface.BACKENDS, default="auto",
                   help="distance transform (default auto: SciPy if installed, else torch)")
    p.add_argument("--npz-key", help="array to read from .npz files holding several")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p
