"""Time ``diceloss`` surface metrics against MONAI on one volume with many labels.

    python benchmarks/bench_eval.py [--size 256] [--labels 10] [--repeat 3] [--out FILE]

The volume: ``--labels`` ellipsoids of random size and place in a ``--size``^3 label map; the
prediction moves and rescales each by a few voxels. Timed on the same label maps:

* diceloss ``segmentation_metrics(metrics=("hd95", "nsd"))`` (SciPy distance transforms), then the
  same with every metric (Dice, IoU, precision, recall, volume differences, HD, HD95, ASSD, NSD), and
  with the torch fallback;
* MONAI ``compute_hausdorff_distance(percentile=95)`` + ``compute_surface_dice`` on the one-hot
  tensors they need (building those is timed apart and not counted).

* eval's default metrics (``DEFAULT_METRICS``) once per surface-distance definition: ``surface`` "voxel" /
  "surfel" x ``percentile`` "directed" / "pooled";
* DeepMind ``surface-distance`` (``compute_surface_distances`` per label, then ``compute_robust_hausdorff(95)``,
  ``compute_average_surface_distance``, ``compute_surface_dice_at_tolerance``), the peer of "surfel", at
  ``--deepmind-size`` (default: the same size) and medpy ``hd95`` + ``assd`` per label, the peer of "pooled"
  (``--no-medpy`` to skip: it transforms the whole volume per label).

* with ``--families`` (``--only-families``: that part alone): eval's component, lesion-wise and topology
  metrics (``diceloss.metrics.families.family_metrics``: cc_dice; lesion_f1, lesion_precision, lesion_recall,
  pq; cldice; betti0..2) per family and all together, against eval's default overlap + surface metrics on
  the same case; then both in one go as ``diceloss eval`` runs them (one ``label_boxes`` pass shared), whose
  excess over the defaults alone is what the families add to an eval run. The ratio families / (overlap +
  surface) is printed per family from the medians, the minima and the CPU times of this process (the least
  distorted by other load on the machine); issue 18's budget: <= 3x. ``--only-families`` writes
  ``results/eval_families.json``.

The values are compared too (max |difference| of HD95 and NSD; of each peer's metrics against its
definition). Prints a table and the ratio, and writes JSON. The numbers are wall-clock on whatever CPU
runs this: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch

from diceloss.metrics.surface import DEFAULT_METRICS, PERCENTILES, SURFACES, segmentation_metrics

TOLERANCE = 1.0


def make_case(size: int, n_labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoids of radii 8..40 voxels; the prediction shifts each by up to 3 voxels, scales it by +-10%."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((size,) * 3, dtype=np.uint8)
    pred = np.zeros_like(gt)
    for c in range(1, n_labels + 1):
        r = rng.uniform(8, min(40, size / 5), size=3)
        centre = rng.uniform(r.max() + 4, size - r.max() - 4, size=3)
        shift = rng.integers(-3, 4, size=3)
        r2 = r * rng.uniform(0.9, 1.1, size=3)
        for out, ctr, rad in ((gt, centre, r), (pred, centre + shift, r2)):
            lo = np.maximum(np.floor(ctr - rad).astype(int), 0)
            hi = np.minimum(np.ceil(ctr + rad).astype(int) + 1, size)
            grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
            inside = sum(((g - x) / s) ** 2 for g, x, s in zip(grids, ctr, rad)) <= 1
            out[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = c
    return pred, gt


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def definitions(args, pred, gt, labels, rows, doc) -> None:
    """eval's default metrics per definition, and the peers of the non-MONAI ones on the same labels."""
    ours = {}
    for surf in SURFACES:
        for perc in PERCENTILES:
            med, best, ours[surf, perc] = timed(
                lambda s=surf, p=perc: segmentation_metrics(pred, gt, labels=labels, metrics=DEFAULT_METRICS,
                                                            tolerance=TOLERANCE, surface=s, percentile=p),
                args.repeat)
            rows.append({"name": f"diceloss eval metrics {surf}/{perc}", "median_s": med, "min_s": best})
    diffs = doc.setdefault("max_abs_diff_vs_peer", {})
    if not args.no_deepmind:
        try:
            import surface_distance as sd
        except ImportError as err:
            print(f"DeepMind not timed ({err})")
        else:
            size = args.deepmind_size or args.size
            if size != args.size:  # DeepMind on a smaller case: diceloss's surfel timed there too
                p_dm, g_dm = make_case(size, args.labels)
                med, best, ref_ours = timed(
                    lambda: segmentation_metrics(p_dm, g_dm, labels=labels, metrics=DEFAULT_METRICS,
                                                 tolerance=TOLERANCE, surface="surfel"), args.repeat)
                rows.append({"name": f"diceloss eval metrics surfel/directed at {size}^3", "median_s": med,
                             "min_s": best})
            else:
                p_dm, g_dm, ref_ours = pred, gt, ours["surfel", "directed"]

            def deepmind():
                out = {}
                for c in labels:
                    s = sd.compute_surface_distances(g_dm == c, p_dm == c, (1.0, 1.0, 1.0))
                    a_gt, a_pred = s["surfel_areas_gt"].sum(), s["surfel_areas_pred"].sum()
                    to_pred, to_gt = sd.compute_average_surface_distance(s)
                    out[c] = {"hd95": sd.compute_robust_hausdorff(s, 95),
                              "assd": (to_pred * a_gt + to_gt * a_pred) / (a_gt + a_pred),
                              "nsd": sd.compute_surface_dice_at_tolerance(s, TOLERANCE)}
                return out

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                med, best, ref = timed(deepmind, 1)
            rows.append({"name": f"DeepMind surface-distance at {size}^3", "median_s": med, "min_s": best})
            doc["deepmind_size"] = size
            diffs["DeepMind (surfel/directed)"] = {
                k: max(abs(ref_ours[c][k] - ref[c][k]) for c in labels) for k in ("hd95", "assd", "nsd")}
    if not args.no_medpy:
        try:
            from medpy.metric import binary as mb
        except ImportError as err:
            print(f"medpy not timed ({err})")
        else:
            def medpy():
                return {c: {"hd95": mb.hd95(pred == c, gt == c), "assd": mb.assd(pred == c, gt == c)} for c in labels}

            med, best, ref = timed(medpy, 1)
            rows.append({"name": "medpy hd95 + assd", "median_s": med, "min_s": best})
            diffs["medpy (voxel/pooled)"] = {
                k: max(abs(ours["voxel", "pooled"][c][k] - ref[c][k]) for c in labels) for k in ("hd95", "assd")}


def _timed_both(fn, repeat: int):
    """(median wall, min wall, median CPU time of this process, result): CPU time is what another process's
    load on a shared machine distorts least (everything here runs on one thread)."""
    wall, cpu, result = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), min(wall), statistics.median(cpu), result


def families(args, pred, gt, labels, rows, doc) -> None:
    """eval's metric families against eval's default overlap + surface metrics, on the same labels."""
    from diceloss.metrics.families import COMPONENT_METRICS, FAMILY_METRICS, LESION_METRICS, family_metrics
    from diceloss.metrics.surface import label_boxes

    groups = {"cc_dice": COMPONENT_METRICS, "lesion": LESION_METRICS, "cldice": ("cldice",),
              "betti": ("betti0", "betti1", "betti2"), "all families": FAMILY_METRICS}
    family_metrics(gt[:16, :16, :16], gt[:16, :16, :16], FAMILY_METRICS, labels=[1])  # imports, first calls

    def base_fn():
        return segmentation_metrics(pred, gt, labels=labels, metrics=DEFAULT_METRICS, tolerance=TOLERANCE,
                                    backend="scipy")

    def eval_all():  # as `diceloss eval --metrics` with the defaults and every family: one box pass for both
        boxes = label_boxes(pred, gt)
        scores = segmentation_metrics(pred, gt, labels=labels, metrics=DEFAULT_METRICS, tolerance=TOLERANCE,
                                      backend="scipy", boxes=boxes)
        return scores, family_metrics(pred, gt, FAMILY_METRICS, labels=labels, boxes=boxes)

    med, best, base_cpu, _ = _timed_both(base_fn, args.repeat)
    base, base_min = med, best
    rows.append({"name": "eval overlap + surface (default)", "median_s": med, "min_s": best, "cpu_s": base_cpu})
    ratios, ratios_min, ratios_cpu = {}, {}, {}
    for name, metrics in groups.items():
        med, best, cpu, _ = _timed_both(lambda m=metrics: family_metrics(pred, gt, m, labels=labels), args.repeat)
        rows.append({"name": f"eval {name}", "median_s": med, "min_s": best, "cpu_s": cpu})
        ratios[name], ratios_min[name], ratios_cpu[name] = med / base, best / base_min, cpu / base_cpu
    med, best, cpu, (scores, fam) = _timed_both(eval_all, args.repeat)
    rows.append({"name": "eval default + all families", "median_s": med, "min_s": best, "cpu_s": cpu})
    # what the families add to an eval run that scores the defaults anyway (the box pass shared)
    name = "families added to eval defaults"
    ratios[name], ratios_min[name], ratios_cpu[name] = (med - base) / base, (best - base_min) / base_min, \
        (cpu - base_cpu) / base_cpu
    same = fam == family_metrics(pred, gt, FAMILY_METRICS, labels=labels) and scores == base_fn()
    doc["shared_boxes_same_values"] = bool(same)
    doc["families_over_overlap_surface"] = ratios
    doc["families_over_overlap_surface_min"] = ratios_min
    doc["families_over_overlap_surface_cpu"] = ratios_cpu
    doc["families_budget"] = 3.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--labels", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="repeats of each diceloss timing (MONAI runs once)")
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--no-torch-backend", action="store_true")
    ap.add_argument("--no-definitions", action="store_true", help="skip the per-definition timings")
    ap.add_argument("--no-deepmind", action="store_true")
    ap.add_argument("--deepmind-size", type=int, default=None, help="volume size for DeepMind (default --size)")
    ap.add_argument("--no-medpy", action="store_true")
    ap.add_argument("--families", action="store_true", help="also time eval's component / lesion / topology metrics")
    ap.add_argument("--only-families", action="store_true", help="time only those against overlap + surface")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "results", "eval.json"))
    args = ap.parse_args(argv)

    pred, gt = make_case(args.size, args.labels)
    labels = list(range(1, args.labels + 1))
    rows = []
    # warm-up: imports and first-call costs stay out of the timings
    for backend in ("scipy", "torch"):
        segmentation_metrics(gt[:8, :8, :8], gt[:8, :8, :8], labels=[1], backend=backend)
    if args.only_families:
        return _families_only(args, pred, gt, labels, rows)

    def dl(metrics, backend="scipy"):
        return lambda: segmentation_metrics(pred, gt, labels=labels, metrics=metrics, tolerance=TOLERANCE,
                                            backend=backend)

    med, best, ours = timed(dl(("hd95", "nsd")), args.repeat)
    rows.append({"name": "diceloss hd95 + nsd (scipy EDT)", "median_s": med, "min_s": best})
    med, best, _ = timed(dl(DEFAULT_METRICS + ("hd",)), args.repeat)
    rows.append({"name": "diceloss all 10 metrics (scipy EDT)", "median_s": med, "min_s": best})
    if not args.no_torch_backend:
        med, best, ours_t = timed(dl(("hd95", "nsd"), "torch"), 1)
        rows.append({"name": "diceloss hd95 + nsd (torch fallback)", "median_s": med, "min_s": best})

    doc = {
        "size": args.size, "labels": args.labels, "tolerance": TOLERANCE, "repeat": args.repeat,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "loadavg_before": list(os.getloadavg()),
    }
    try:
        if args.no_monai:
            raise ImportError("--no-monai")
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    except ImportError as err:
        print(f"MONAI not timed ({err})")
    else:
        t0 = time.perf_counter()
        eye = torch.eye(args.labels + 1, dtype=torch.float32)
        P = eye[torch.from_numpy(pred).long()].permute(3, 0, 1, 2)[None].contiguous()
        G = eye[torch.from_numpy(gt).long()].permute(3, 0, 1, 2)[None].contiguous()
        doc["monai_onehot_s"] = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            hd = compute_hausdorff_distance(P, G, percentile=95)[0]
            t1 = time.perf_counter()
            nsd = compute_surface_dice(P, G, class_thresholds=[TOLERANCE] * args.labels)[0]
            t2 = time.perf_counter()
        del P, G
        rows.append({"name": "MONAI compute_hausdorff_distance(95)", "median_s": t1 - t0, "min_s": t1 - t0})
        rows.append({"name": "MONAI compute_surface_dice", "median_s": t2 - t1, "min_s": t2 - t1})
        rows.append({"name": "MONAI hd95 + nsd", "median_s": t2 - t0, "min_s": t2 - t0})
        doc["max_abs_diff_vs_monai"] = {
            "hd95": max(abs(ours[c]["hd95"] - float(hd[i])) for i, c in enumerate(labels)),
            "nsd": max(abs(ours[c]["nsd"] - float(nsd[i])) for i, c in enumerate(labels)),
        }
        doc["ratio_monai_over_diceloss"] = (t2 - t0) / rows[0]["median_s"]
        if not args.no_torch_backend:
            doc["ratio_monai_over_diceloss_torch"] = (t2 - t0) / rows[2]["median_s"]
    if not args.no_torch_backend:
        doc["max_abs_diff_torch_vs_scipy"] = max(
            abs(ours[c][k] - ours_t[c][k]) for c in labels for k in ("hd95", "nsd")
        )
    if not args.no_definitions:
        definitions(args, pred, gt, labels, rows, doc)
    if args.families:
        families(args, pred, gt, labels, rows, doc)
    doc["results"] = rows

    load = ", ".join(f"{x:.1f}" for x in doc["loadavg_before"])
    doc["cpu_model"] = _cpu_model()
    print(f"eval benchmark: {args.size}^3 volume, {args.labels} labels, NSD tolerance {TOLERANCE} "
          f"(median of {args.repeat} for diceloss, MONAI once; {os.cpu_count()} CPUs, load average {load})")
    print(f"{'':40}{'seconds':>10}")
    for r in rows:
        print(f"{r['name']:40}{r['median_s']:>10.3f}")
    if "ratio_monai_over_diceloss" in doc:
        print(f"MONAI hd95 + nsd / diceloss hd95 + nsd: {doc['ratio_monai_over_diceloss']:.1f}x "
              f"(one-hot for MONAI, not counted: {doc['monai_onehot_s']:.2f} s)")
        d = doc["max_abs_diff_vs_monai"]
        print(f"max |diceloss - MONAI|: hd95 {d['hd95']:.2e}, nsd {d['nsd']:.2e}")
    for peer, diffs in doc.get("max_abs_diff_vs_peer", {}).items():
        print(f"max |diceloss - {peer}|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    _print_family_ratios(doc)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


def _print_family_ratios(doc) -> None:
    ratios = doc.get("families_over_overlap_surface", {})
    if ratios:
        print(f"{'':46}{'median':>8}{'min':>8}{'CPU':>8}   (time / time of overlap + surface)")
    for name, r in ratios.items():
        over = f" (over the {doc['families_budget']:g}x budget by {r / doc['families_budget']:.2f}x)" \
            if r > doc["families_budget"] else ""
        print(f"{name + ' / overlap + surface':46}{r:>7.2f}x{doc['families_over_overlap_surface_min'][name]:>7.2f}x"
              f"{doc['families_over_overlap_surface_cpu'][name]:>7.2f}x{over}")
    if "shared_boxes_same_values" in doc:
        print(f"one box pass shared by both: same values {doc['shared_boxes_same_values']}")


def _families_only(args, pred, gt, labels, rows) -> int:
    doc = {"size": args.size, "labels": args.labels, "repeat": args.repeat, "cpu_model": _cpu_model(),
           "cpu_count": os.cpu_count(), "loadavg_before": list(os.getloadavg())}
    families(args, pred, gt, labels, rows, doc)
    doc["results"] = rows
    print(f"eval families: {args.size}^3 volume, {args.labels} labels, median of {args.repeat} "
          f"({doc['cpu_model']}, {os.cpu_count()} CPUs, load average {doc['loadavg_before'][0]:.1f})")
    print(f"{'':40}{'median s':>10}{'min s':>10}{'CPU s':>10}")
    for r in rows:
        print(f"{r['name']:40}{r['median_s']:>10.3f}{r['min_s']:>10.3f}{r['cpu_s']:>10.3f}")
    _print_family_ratios(doc)
    doc["loadavg_after"] = list(os.getloadavg())
    out = args.out if args.out != ap_default_out() else os.path.join(os.path.dirname(args.out), "eval_families.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")
    return 0


def ap_default_out() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "eval.json")


if __name__ == "__main__":
    raise SystemExit(main())
