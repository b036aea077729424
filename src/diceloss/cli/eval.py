"""``diceloss eval PRED GT``: score predicted label maps against ground truth, per case and label.

PRED and GT are two files, or two folders whose files are matched by name without the extension
(``case_01.nii.gz`` in one matches ``case_01.npy`` in the other). Every case gets the metrics of
:mod:`diceloss.metrics.surface` per label; the terminal shows a summary per label (mean, std, median and the
number of cases with a value); ``--csv`` / ``--json`` write every case. A case that cannot be read,
whose shapes differ, whose NIfTI orientation or origin differ, or that has no prediction fails with a
one-line reason, as does a ground-truth name that is a broken symlink or a folder, or a case whose worker
process dies (``--jobs``); the others still run, and the exit code is 1 (0 when every case was scored; 2
for bad arguments, among them a ``--csv`` / ``--json`` path that cannot be written, checked before
scoring). A 4D NIfTI (several volumes) is refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import re
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection

import numpy as np

from .. import io as dio
from ..metrics import families, surface
from ..metrics.families import (  # noqa: F401  (family_metrics, blank_family, TOPOLOGY_METRICS: importable here)
    COMPONENT_METRICS,
    FAMILY_METRICS,
    LESION_METRICS,
    TOPOLOGY_METRICS,
    blank_family,
    family_metrics,
)
from . import report as html_report
from .progress import progress

# the families beside the overlap and surface metrics (label maps only: calibration needs probabilities):
# COMPONENT_METRICS, LESION_METRICS, TOPOLOGY_METRICS, FAMILY_METRICS, family_metrics, blank_family
ALL_METRICS = surface.METRICS + FAMILY_METRICS
_ALIASES = {"betti": ("betti0", "betti1", "betti2"), "lesion": LESION_METRICS}
_CALIBRATION = ("ece", "ace", "mce", "calibration")
_FAMILY_OPTIONS = ("connectivity", "lesion_match", "lesion_threshold", "lesion_inclusive")

DESCRIPTION = """\
Score predicted label maps against ground truth, per case and label: dice, iou, precision, recall,
avd, rvd, hd, hd95, assd, nsd (distances in the units of the voxel spacing); on request (--metrics) the
per-component Dice cc_dice, the lesion-wise lesion_f1, lesion_precision, lesion_recall, pq, and the
topology metrics cldice, betti0, betti1, betti2. Calibration errors need probabilities: not for label maps.

PRED and GT are two files or two folders; folder files are matched by name without the extension.
Formats: .npy, .npz, .png, .tif, .nii, .nii.gz (2D or 3D). A case that cannot be read (a broken
symlink, a folder), whose shapes or NIfTI orientation / origin differ, that has no prediction, or whose
worker process dies fails with a one-line reason; the others still run. Exit code: 0 when every case
was scored, 1 when some failed, 2 for bad arguments (output paths are checked before scoring)."""

EPILOG = """\
empty masks (--empty, --empty-distance):
  label absent from both: dice, iou, precision, recall, nsd = 1 ("one", default), 0 ("zero") or NaN
  ("nan"); avd, rvd = 0 (NaN under "nan"); hd, hd95, assd = NaN. Label in one only: dice = iou = nsd = 0;
  hd, hd95, assd = inf (default), NaN, or the image diagonal ("diagonal"). NaN is left out of the means
  (the n column counts the cases with a value). In the JSON file NaN is null and infinity "inf".

surface-distance definitions (--surface, --percentile; printed, in the JSON "definitions", and in the CSV's
``definition`` column): voxel + directed is MONAI's (the default), surfel + directed DeepMind
surface-distance's, voxel + pooled medpy's hd95.

examples:
  diceloss eval preds/ labelsTs/ --csv scores.csv --jobs 4
  diceloss eval preds/ labelsTs/ --surface surfel --percentile pooled --json scores.json
  diceloss eval pred.nii.gz gt.nii.gz --labels 1-3 --tolerance 2 --metrics dice,hd95,nsd
  diceloss eval preds/ labelsTs/ --metrics dice,lesion,betti --lesion-threshold 0.1 --connectivity face
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
    """The metric names asked for, in order, without repeats; ``all`` is the overlap and surface metrics
    (as before the families were added), ``betti`` / ``lesion`` stand for their family."""
    if text.strip() == "all":
        return surface.METRICS
    names: list[str] = []
    for n in (n for n in text.replace(" ", "").split(",") if n):
        for m in _ALIASES.get(n, (n,)):
            if m not in names:
                names.append(m)
    calibration = [n for n in names if n in _CALIBRATION]
    if calibration:
        raise UsageError(f"--metrics: {', '.join(calibration)}: calibration errors need predicted probabilities, "
                         "not label maps; use diceloss.metrics.calibration_error in Python")
    bad = [n for n in names if n not in ALL_METRICS]
    if bad or not names:
        valid = ", ".join(ALL_METRICS)
        raise UsageError(f"--metrics: expected names from {valid} (or all, betti, lesion); got {text!r}"
                         + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return tuple(names)


def _family_options(args: argparse.Namespace, metrics: tuple[str, ...]) -> dict:
    """--connectivity and --lesion-* as options (only those of the families asked for); a flag given for a
    family that is not asked for is an error, not silently ignored."""
    lesion = any(m in LESION_METRICS for m in metrics)
    components = lesion or any(m == "cc_dice" or m.startswith("betti") for m in metrics)
    conn, match, threshold, inclusive = (getattr(args, k, None) for k in ("connectivity", "lesion_match",
                                                                          "lesion_threshold", "lesion_inclusive"))
    given = [flag for flag, value in (("--connectivity", conn), ("--lesion-match", match),
                                      ("--lesion-threshold", threshold), ("--lesion-inclusive", inclusive or None))
             if value is not None]
    for flag in given:
        if not (lesion if flag.startswith("--lesion") else components):
            wanted = ", ".join(LESION_METRICS) if flag.startswith("--lesion") else "cc_dice, the lesion metrics, betti"
            raise UsageError(f"{flag}: applies to {wanted}; expected one of them in --metrics, got "
                             f"{','.join(metrics)}")
    out: dict = {}
    if components:
        out["connectivity"] = conn or "full"
    if lesion:
        if match == "overlap" and (threshold is not None or inclusive):
            raise UsageError("--lesion-threshold / --lesion-inclusive: expected --lesion-match iou (overlap "
                             "matches any overlapping pair, without a threshold)")
        value = 0.5 if threshold is None else float(threshold)
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise UsageError(f"--lesion-threshold: expected an IoU in [0, 1), got {threshold}")
        out.update(lesion_match=match or "iou", lesion_threshold=value, lesion_inclusive=bool(inclusive))
    return out


def _check_output(flag: str, path: str | None) -> None:
    """Refuse an output file that cannot be written, before any case is scored."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"{flag}: expected a file to write, got the folder {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag}: expected a file in an existing folder, got {path!r} "
                         f"({parent!r} does not exist)")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag}: expected a writable file, got {path!r} (not writable)")
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: expected a file in a writable folder, got {path!r} ({parent!r} is not writable)")


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
    # a ground-truth name that is a broken symlink, a loop or a folder is a case that failed, not no case
    bad_gts = {k: v for k, v in dio.unreadable_entries(gt).items() if k not in gts and k not in gt_dupes}
    bad_preds = dio.unreadable_entries(pred)
    for stem, why in bad_gts.items():
        errors[stem] = f"ground truth {why} (in {gt})"
    for kind, dupes in (("prediction", pred_dupes), ("ground truth", gt_dupes)):
        for stem, paths in dupes.items():
            listed = ", ".join(os.path.basename(p) for p in paths)
            errors[stem] = f"several {kind} files for one case: {listed}"
    names = sorted(set(gts) | set(gt_dupes) | set(bad_gts))
    cases = []
    for stem in names:
        if stem not in errors and stem not in preds and stem not in pred_dupes:
            if stem in bad_preds:
                errors[stem] = f"prediction {bad_preds[stem]} (in {pred})"
            else:
                errors[stem] = f"no prediction: no file named {stem}.* in {pred}"
        cases.append(Case(stem, preds.get(stem), gts.get(stem)))
    no_gt = (set(preds) | set(pred_dupes)) - set(names)
    extra = sorted(os.path.basename(f) for s in no_gt for f in ([preds[s]] if s in preds else pred_dupes[s]))
    if not names and not extra:
        raise UsageError(f"no label maps ({', '.join(dio.EXTENSIONS)}) in {gt!r} or {pred!r}")
    return cases, extra, errors


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (dio.ReadError, ValueError)) else f"{type(err).__name__}: {text}"


def _axcodes(direction: np.ndarray) -> tuple[str, ...]:
    """('R', 'A', 'S')-style codes of the voxel axes (the world direction each axis mostly points to)."""
    codes = []
    for col in direction.T:
        k = int(np.argmax(np.abs(col)))
        codes.append(("L", "P", "I")[k] if col[k] < 0 else ("R", "A", "S")[k])
    return tuple(codes)


def _check_geometry(pred: dio.LabelImage, gt: dio.LabelImage) -> None:
    """Refuse two NIfTI maps whose voxel grids do not lie on one another in world space: a different axis
    orientation (one axis stored flipped) or origin. Spacing differences are left to the spacing check."""
    if pred.affine is None or gt.affine is None:
        return
    a, b = np.asarray(pred.affine, np.float64), np.asarray(gt.affine, np.float64)
    zoom_a = np.linalg.norm(a[:3, :3], axis=0)
    zoom_b = np.linalg.norm(b[:3, :3], axis=0)
    dir_a = a[:3, :3] / np.where(zoom_a > 0, zoom_a, 1.0)
    dir_b = b[:3, :3] / np.where(zoom_b > 0, zoom_b, 1.0)
    if not np.allclose(dir_a, dir_b, atol=1e-3):
        raise ValueError(
            f"orientation differs: prediction axes {_axcodes(dir_a)} vs ground truth {_axcodes(dir_b)} "
            f"(NIfTI affines); resample or reorient the prediction onto the ground truth's grid"
        )
    tol = 1e-2 * float(min(zoom_b[zoom_b > 0], default=1.0))  # a hundredth of a voxel
    if np.abs(a[:3, 3] - b[:3, 3]).max() > tol:
        oa = tuple(round(float(v), 4) for v in a[:3, 3])
        ob = tuple(round(float(v), 4) for v in b[:3, 3])
        raise ValueError(
            f"origin differs: prediction {oa} vs ground truth {ob} (NIfTI affines); "
            f"resample the prediction onto the ground truth's grid"
        )


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
        _check_geometry(pred, gt)
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
        base = tuple(m for m in opts["metrics"] if m in surface.METRICS)
        family = tuple(m for m in opts["metrics"] if m in FAMILY_METRICS)
        scores: dict[int, dict[str, float]] = {}
        # the families box every label too: one find_objects pass per map for both
        boxes = surface.label_boxes(pred.array, gt.array) if family else None
        if base:
            scores = surface.segmentation_metrics(
                pred.array, gt.array, labels=opts["labels"], metrics=base, spacing=res.spacing,
                tolerance=opts["tolerance"], ignore_index=opts["ignore_index"],
                include_background=opts["include_background"], empty=opts["empty"],
                empty_distance=opts["empty_distance"], backend=opts["backend"],
                surface=opts["surface"], percentile=opts["percentile"], boxes=boxes,
            )
        if family:
            labels = list(scores) if base else opts["labels"]
            extra = family_metrics(pred.array, gt.array, family, labels=labels, spacing=res.spacing,
                                   ignore_index=opts["ignore_index"],
                                   include_background=opts["include_background"], empty=opts["empty"],
                                   connectivity=opts.get("connectivity", "full"),
                                   match=opts.get("lesion_match", "iou"),
                                   threshold=opts.get("lesion_threshold", 0.5),
                                   strict=not opts.get("lesion_inclusive", False), boxes=boxes)
            for c, vals in extra.items():
                scores.setdefault(c, {}).update(vals)
        res.metrics = {c: {m: scores[c][m] for m in opts["metrics"]} for c in sorted(scores)}
    except Exception as err:  # one bad case must not stop the others
        res.error = _one_line(err)
    return res


def _progress(total: int, enabled: bool):
    # a tqdm bar on a terminal; in a log (stderr not a terminal) a line every few seconds and a last one
    return progress(total, desc="eval", unit="case", file=sys.stderr, enabled=enabled, leave=False)


def _init_worker() -> None:
    # the processes are the parallelism: one torch thread each, no oversubscription
    import torch

    torch.set_num_threads(1)


def _isolated_worker(case: Case, opts: dict, conn) -> None:
    _init_worker()
    try:
        conn.send(evaluate_case(case, opts))
    finally:
        conn.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}{' (out of memory?)' if name == 'SIGKILL' else ''}"
    return f"exit code {exitcode}"


def run_isolated(cases: list[Case], opts: dict, workers: int, ctx, done) -> None:
    """Score ``cases`` in one process each, ``workers`` at a time; a process that dies fails only its case."""
    pending = list(cases)
    running: dict = {}  # connection -> (process, case)
    while pending or running:
        while pending and len(running) < workers:
            case = pending.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_isolated_worker, args=(case, opts, send), daemon=True)
            proc.start()
            send.close()
            running[recv] = (proc, case)
        for conn in mp_connection.wait(list(running)):
            proc, case = running.pop(conn)
            try:
                res = conn.recv()
            except (EOFError, OSError):  # the process died before it sent its result
                res = None
            conn.close()
            proc.join()
            if res is None:
                why = _death(proc.exitcode)
                res = CaseResult(case.name, case.pred, case.gt, error=f"worker process died ({why}) while scoring it")
            done(res)


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
        broken: list[Case] = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(evaluate_case, case, opts): case for case in todo}
            for fut in as_completed(futures):
                case = futures[fut]
                try:
                    done(fut.result())
                except BrokenProcessPool:  # a worker died (e.g. out of memory): the pool fails every case left
                    broken.append(case)
                except Exception as err:
                    done(CaseResult(case.name, case.pred, case.gt, error=f"worker failed: {_one_line(err)}"))
        # rerun those in a process each, so that the one that kills its worker is named and the others scored
        run_isolated([c for c in todo if c in broken], opts, workers, ctx, done)
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
        base = tuple(m for m in opts["metrics"] if m in surface.METRICS)
        family = tuple(m for m in opts["metrics"] if m in FAMILY_METRICS)
        blank = surface.empty_metrics(base, empty=opts["empty"]) if base else {}
        for r in scored:
            values = {**blank, **blank_family(family, empty=opts["empty"], ndim=len(r.shape or (0,) * 3))}
            for c in labels:
                r.metrics.setdefault(c, {m: values[m] for m in opts["metrics"]})
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
    w = max([10] + [len(m) + 1 for per_metric in summary.values() for m in per_metric])
    lines = [f"{'label':>6}  {'metric':<{w}}{'mean':>12}{'std':>12}{'median':>12}{'n':>6}"]
    for c, per_metric in summary.items():
        for i, (m, s) in enumerate(per_metric.items()):
            lab = str(c) if i == 0 else ""
            lines.append(f"{lab:>6}  {m:<{w}}{_fmt(s['mean']):>12}{_fmt(s['std']):>12}{_fmt(s['median']):>12}"
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


def write_csv(path: str, results: list[CaseResult], metrics: tuple[str, ...], definition: str | None = None) -> None:
    """One row per case and label; with ``definition`` (the surface-distance definition; eval always passes it)
    a last column says it on every row."""
    extra = [definition] if definition else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "label", *metrics, "error", *(["definition"] if definition else [])])
        for r in results:
            if r.error is not None:
                w.writerow([r.name, "", *([""] * len(metrics)), r.error, *extra])
                continue
            for c, vals in r.metrics.items():
                w.writerow([r.name, c, *(repr(float(vals[m])) for m in metrics), "", *extra])


def family_definitions(metrics, opts: dict | None = None) -> dict[str, str]:
    """Definition per family asked for (keys cc_dice, lesion, cldice, betti), worded with eval's --connectivity
    and --lesion-* options (default: their defaults), for the JSON, terminal and report."""
    o = opts or {}
    return families.family_definitions(
        metrics, connectivity=o.get("connectivity", "full"), match=o.get("lesion_match", "iou"),
        threshold=o.get("lesion_threshold", 0.5), strict=not o.get("lesion_inclusive", False),
        empty_name="the --empty value")


def _definitions(opts: dict) -> dict:
    """The surface-distance definition eval used, and those of the metric families asked for, for the JSON file
    and the terminal."""
    return {"surface": opts["surface"], "percentile": opts["percentile"],
            "name": surface.definition_name(opts["surface"], opts["percentile"]),
            **family_definitions(opts["metrics"], opts)}


def write_json(path: str, results, summary, unmatched, opts, args) -> None:
    doc = {
        "pred": args.pred,
        "gt": args.gt,
        # the --connectivity / --lesion-* options only when a family they apply to was asked for
        "options": {k: opts[k] for k in ("labels", "metrics", "spacing", "tolerance", "ignore_index",
                                         "include_background", "empty", "empty_distance", "surface",
                                         "percentile", *_FAMILY_OPTIONS) if k in opts},
        "definitions": _definitions(opts),
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
            "surface": args.surface or "voxel",
            "percentile": args.percentile or "directed",
        }
        if not (math.isfinite(opts["tolerance"]) and opts["tolerance"] >= 0):
            raise UsageError(f"--tolerance: expected a number >= 0, got {args.tolerance}")
        if args.jobs < 1:
            raise UsageError(f"--jobs: expected a number >= 1, got {args.jobs}")
        if opts["labels"] and opts["ignore_index"] in opts["labels"]:
            raise UsageError(f"--labels must not contain --ignore-index {opts['ignore_index']}")
        opts.update(_family_options(args, opts["metrics"]))
        _check_output("--csv", args.csv)
        _check_output("--json", args.json)
        if args.csv and args.json and os.path.realpath(args.csv) == os.path.realpath(args.json):
            raise UsageError(f"--csv and --json: expected two files, got {args.csv!r} for both")
        cases, unmatched, known = find_cases(args.pred, args.gt)
        if args.report is not None and (why := html_report.check(args.report)):
            raise UsageError(f"--report: {why}")
    except UsageError as err:
        print(f"diceloss eval: error: {err}", file=sys.stderr)
        return 2
    opts["known_errors"] = known
    opts["metric_definitions"] = family_definitions(opts["metrics"], opts)
    if unmatched:
        print(f"{len(unmatched)} prediction(s) without ground truth, not scored: {', '.join(unmatched)}",
              file=sys.stderr)
    results = run_cases(cases, opts, args.jobs, not args.no_progress)
    labels = _fill_absent_labels(results, opts)
    summary = summarize(results, labels, opts["metrics"])
    failed = [r for r in results if r.error]
    n_ok = len(results) - len(failed)
    print(f"scored {n_ok} of {len(results)} case(s); labels {', '.join(map(str, labels)) or 'none'}")
    if any(m in surface.DISTANCE_METRICS for m in opts["metrics"]):
        print(f"surface distances: {_definitions(opts)['name']}")
    for key, text in family_definitions(opts["metrics"], opts).items():
        print(f"{key}: {text}")
    if summary:
        print(format_table(summary))
    # every CSV row names the surface-distance definition it was scored with (numbers of different definitions
    # differ by millimetres and must not be mixed up)
    named_definition = f"surface={opts['surface']} percentile={opts['percentile']}"
    # checked before scoring; a write can still fail (disk full): each output on its own, a one-line reason
    unwritten = []
    for flag, path, write in (("--csv", args.csv,
                               lambda: write_csv(args.csv, results, opts["metrics"], named_definition)),
                              ("--json", args.json,
                               lambda: write_json(args.json, results, summary, unmatched, opts, args)),
                              ("--report", args.report,
                               lambda: html_report.write(args.report, results, summary, labels, opts, unmatched,
                                                         args.pred, args.gt))):
        if path:
            try:
                write()
            except OSError as err:
                unwritten.append(path)
                print(f"diceloss eval: error: {flag}: could not write {path!r} ({_one_line(err)})", file=sys.stderr)
    if failed:
        print(f"{len(failed)} case(s) failed:")
        for r in failed:
            print(f"  {r.name}: {r.error}")
        return 1
    return 1 if unwritten else 0


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
                   help=f"comma-separated, from {', '.join(surface.METRICS)}, or all (these ten; default: all "
                        f"but hd); and the families {', '.join(FAMILY_METRICS)} (betti2 3D only; 'betti', "
                        f"'lesion' name a family), defined in the JSON's definitions. Calibration errors (ece, "
                        f"ace, mce) need probabilities, not label maps: not available here")
    p.add_argument("--csv", metavar="FILE", help="write one row per case and label")
    p.add_argument("--json", metavar="FILE", help="write every case, the failures and the summary")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html: box plots per label, worst cases, "
                                                   "HD95 histogram, definitions, failures (needs matplotlib)")
    p.add_argument("--jobs", type=int, default=1, help="cases scored in parallel (processes; default 1)")
    p.add_argument("--empty", choices=surface.EMPTY_POLICIES, default="one",
                   help="scores of a label absent from both maps (default one)")
    p.add_argument("--empty-distance", choices=surface.EMPTY_DISTANCES, default="inf",
                   help="hd/hd95/assd of a label in one map only (default inf)")
    p.add_argument("--backend", choices=surface.BACKENDS, default="auto",
                   help="distance transform (default auto: SciPy if installed, else torch)")
    p.add_argument("--surface", choices=surface.SURFACES, default=None,
                   help="surface-distance definition: voxel (boundary voxels, as MONAI; default) or surfel "
                        "(surface elements weighted by area, as DeepMind surface-distance; 2D/3D)")
    p.add_argument("--percentile", choices=surface.PERCENTILES, default=None,
                   help="hd95 over the two directions: directed (each direction's, then the larger, as MONAI and "
                        "DeepMind; default) or pooled (one percentile of both, as medpy)")
    p.add_argument("--connectivity", choices=families.CONNECTIVITIES, default=None,
                   help="connectivity of the components of cc_dice, the lesion metrics and betti: full (voxels "
                        "sharing a face, edge or corner touch: 8 in 2D, 26 in 3D; default) or face (4 / 6); the "
                        "Betti numbers' background takes the dual one (4 / 6, or 8 / 26 for face)")
    p.add_argument("--lesion-match", choices=families.MATCHES, default=None,
                   help="lesion matching (one-to-one, greedy by IoU): iou (a pair matches when IoU > "
                        "--lesion-threshold; default) or overlap (any overlap)")
    p.add_argument("--lesion-threshold", type=float, default=None, metavar="IOU",
                   help="IoU a lesion pair must exceed to match, in [0, 1) (default 0.5)")
    p.add_argument("--lesion-inclusive", action="store_true",
                   help="match at IoU >= --lesion-threshold (panoptica's comparison) instead of >")
    p.add_argument("--npz-key", help="array to read from .npz files holding several")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p
