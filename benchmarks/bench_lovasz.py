"""Speed and memory of diceloss's LovaszLoss against segmentation_models_pytorch, kornia and the authors' code.

Usage::

    python benchmarks/bench_lovasz.py                                   # 2 threads, 3 rounds
    python benchmarks/bench_lovasz.py --authors /path/to/LovaszSoftmax  # adds bermanmaxim/LovaszSoftmax's file
    python benchmarks/bench_lovasz.py --rounds 1 --quick                # smoke run

Cases: multiclass Lovász-softmax, float32 logits ``2 randn``, int64 class indices, forward + backward, on 2D
(B=8, C=4, 256x256) and 3D (B=2, C=4, 64^3), with ``per_image`` False and True. The implementations:

* ``diceloss LovaszLoss(per_image=...)`` (classes "present", the authors' default);
* SMP 0.6.0 ``LovaszLoss("multiclass", per_image=...)`` (its losses folder loaded without its model zoo);
* kornia 0.9.0 ``lovasz_softmax_loss`` (per image over all classes, 2D only: its per_image=True rows; with
  random targets every class is present, so "all" and "present" are the same number);
* the authors' ``lovasz_softmax(x.softmax(1), y, per_image=...)`` from ``--authors``'s ``pytorch/lovasz_losses.py``
  (2D only).

Method: every (implementation, case) runs in a fresh child process with ``torch.set_num_threads(threads)`` (and
OMP/MKL_NUM_THREADS); per process 2 untimed calls, then timed calls of ``loss = fn(x, y); loss.backward()``
(``x.grad = None`` outside the timed region) until ``--seconds`` of timed work (at least 3, at most 15). With
``--rounds R`` every case runs in R processes, the implementations in reverse order on odd rounds; the median
over all timed calls is reported, with the min and max. Memory: one more forward + backward under
``torch.profiler`` with ``profile_memory=True``, the peak of the running sum of torch's allocation events
(``_peak_extra_bytes`` of ``benchmarks/run.py``), which counts the gradient of the logits (1 x the logits) and
everything the call allocates. Ratios: diceloss over the fastest (smallest) peer of the same case.

Output: ``benchmarks/results/lovasz.json`` (every timed call, the machine, the versions) and ``lovasz.md``
(``--suffix _1thread``: ``lovasz_1thread.*``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

CASES = {
    "2D": (8, 4, (256, 256)),
    "3D": (2, 4, (64, 64, 64)),
}
IMPLS = ("diceloss", "SMP", "kornia", "authors")


def _load_smp_lovasz():
    import importlib.util

    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("segmentation_models_pytorch is not installed")
    losses_dir = os.path.join(list(spec.submodule_search_locations)[0], "losses")
    lspec = importlib.util.spec_from_file_location(
        "_smp_losses", os.path.join(losses_dir, "__init__.py"), submodule_search_locations=[losses_dir]
    )
    module = importlib.util.module_from_spec(lspec)
    sys.modules["_smp_losses"] = module
    lspec.loader.exec_module(module)
    return module


def _make(impl: str, per_image: bool, ndim: int, authors: str | None):
    """The loss function of an implementation, or a string saying why it does not apply."""
    if impl == "diceloss":
        from diceloss import LovaszLoss

        return LovaszLoss(per_image=per_image)
    if impl == "SMP":
        return _load_smp_lovasz().LovaszLoss("multiclass", per_image=per_image)
    if impl == "kornia":
        if not per_image or ndim != 2:
            return "kornia: per image and 2D only"
        from kornia.losses import lovasz_softmax_loss

        return lovasz_softmax_loss
    if impl == "authors":
        if not authors:
            return "authors: pass --authors"
        if ndim != 2:
            return "authors: 2D only"
        import importlib.util
        import warnings

        spec = importlib.util.spec_from_file_location("_lovasz_authors", Path(authors) / "pytorch" / "lovasz_losses.py")
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
        return lambda x, y: module.lovasz_softmax(x.softmax(1), y, per_image=per_image)
    raise ValueError(impl)


def _worker(spec: dict) -> dict:
    import gc
    import time

    import torch

    sys.path.insert(0, str(HERE))
    from run import _peak_extra_bytes

    torch.set_num_threads(spec["threads"])
    B, C, S = CASES[spec["case"]]
    fn = _make(spec["impl"], spec["per_image"], len(S), spec.get("authors"))
    out = {k: spec[k] for k in ("impl", "case", "per_image")}
    if isinstance(fn, str):
        out["skipped"] = fn
        return out
    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(B, C, *S, generator=g)).requires_grad_(True)
    y = torch.randint(0, C, (B, *S), generator=g)

    def step():
        x.grad = None
        fn(x, y).backward()

    for _ in range(2):
        step()
    times = []
    while len(times) < 3 or (sum(times) < spec["seconds"] and len(times) < 15):
        x.grad = None
        t0 = time.perf_counter()
        fn(x, y).backward()
        times.append(time.perf_counter() - t0)
    x.grad = None
    gc.collect()
    out["value"] = float(fn(x, y).detach())
    out.update(
        times_ms=[t * 1e3 for t in times],
        peak_bytes=_peak_extra_bytes(step, "cpu"),
        logits_bytes=x.numel() * x.element_size(),
    )
    return out


def _run_child(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {k: spec[k] for k in ("impl", "case", "per_image")} | {"skipped": f"failed: {tail[0][:200]}"}


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["case"], r["per_image"]) for r in results}, key=lambda k: (k[0], k[1]))
    for case, per_image in keys:
        group = {}
        for r in results:
            if (r["case"], r["per_image"]) != (case, per_image) or "skipped" in r:
                continue
            entry = group.setdefault(r["impl"], {"times": [], "peaks": [], "logits": r["logits_bytes"], "v": []})
            entry["times"] += r["times_ms"]
            entry["peaks"].append(r["peak_bytes"])
            entry["v"].append(r["value"])
        peers = {k: v for k, v in group.items() if k != "diceloss"}
        best_t = min((statistics.median(v["times"]) for v in peers.values()), default=None)
        best_m = min((min(v["peaks"]) for v in peers.values()), default=None)
        for impl in IMPLS:
            if impl not in group:
                reason = next((r["skipped"] for r in results if r["impl"] == impl and r["case"] == case
                               and r["per_image"] == per_image and "skipped" in r), "not run")
                rows.append({"case": case, "per_image": per_image, "impl": impl, "skipped": reason})
                continue
            e = group[impl]
            med, peak = statistics.median(e["times"]), min(e["peaks"])
            row = {
                "case": case,
                "per_image": per_image,
                "impl": impl,
                "median_ms": med,
                "min_ms": min(e["times"]),
                "max_ms": max(e["times"]),
                "calls": len(e["times"]),
                "peak_mb": peak / 2**20,
                "peak_x_logits": peak / e["logits"],
                "loss": e["v"][0],
            }
            if impl == "diceloss" and best_t:
                row["time_ratio"] = med / best_t
                row["mem_ratio"] = peak / best_m
            rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Lovász-softmax, forward + backward, float32 logits, int64 targets; {meta['machine']}; "
        f"{meta['threads']} threads; torch {meta['versions'].get('torch')}, SMP {meta['versions'].get('smp')}, "
        f"kornia {meta['versions'].get('kornia')}; {meta['rounds']} rounds; {meta['date']}; load average at the end "
        f"{_load(meta)} (other processes share the machine: compare rows of one table, and the min with the median).",
        "",
        "| case | per_image | implementation | median ms (min-max) | peak MB (x logits) | loss | ours / fastest peer: "
        "time, memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['case']} | {r['per_image']} | {r['impl']} |"
        if "skipped" in r:
            lines.append(f"{head} {r['skipped']} | | | |")
            continue
        ratio = f"{r['time_ratio']:.2f}, {r['mem_ratio']:.2f}" if "time_ratio" in r else ""
        lines.append(
            f"{head} {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | {r['peak_mb']:.1f} "
            f"({r['peak_x_logits']:.2f}) | {r['loss']:.6f} | {ratio} |"
        )
    lines += ["", "Target: ours / fastest peer <= 0.5 in time and memory."]
    return "\n".join(lines) + "\n"


def _load(meta: dict) -> str:
    load = meta.get("load_average")
    return "/".join(f"{v:.1f}" for v in load) if load else "unknown"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("smp", "segmentation_models_pytorch"), ("kornia", "kornia"),
                      ("diceloss", "diceloss")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.5, help="timed work per process and case (default 1.5)")
    p.add_argument("--cases", default="2D,3D")
    p.add_argument("--authors", default=None, help="root of a bermanmaxim/LovaszSoftmax checkout")
    p.add_argument("--quick", action="store_true", help="0.2 s of timed work per process (smoke run)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--suffix", default="", help="file names lovasz<suffix>.json / .md (e.g. _1thread)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_worker(json.loads(args.child))))
        return 0

    sys.path.insert(0, str(HERE))
    from run import _cpu_isa_flags, _cpu_name

    seconds = 0.2 if args.quick else args.seconds
    results = []
    for rnd in range(args.rounds):
        order = IMPLS if rnd % 2 == 0 else IMPLS[::-1]
        for case in args.cases.split(","):
            for per_image in (False, True):
                for impl in order:
                    spec = dict(impl=impl, case=case, per_image=per_image, threads=args.threads, seconds=seconds,
                                authors=args.authors)
                    r = _run_child(spec)
                    r["round"] = rnd
                    results.append(r)
                    shown = r.get("skipped") or f"{statistics.median(r['times_ms']):.1f} ms"
                    print(f"round {rnd} {case} per_image={per_image} {impl}: {shown}", file=sys.stderr)
    meta = {
        "machine": f"{_cpu_name()} ({_cpu_isa_flags()}), {os.cpu_count()} CPUs, {platform.system()}",
        "threads": args.threads,
        "rounds": args.rounds,
        "seconds": seconds,
        "versions": _versions(),
        "date": datetime.date.today().isoformat(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    rows = summarise(results)
    table = markdown(rows, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "rows": rows, "results": results}
    (out / f"lovasz{args.suffix}.json").write_text(json.dumps(record, indent=1))
    (out / f"lovasz{args.suffix}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
