"""Per-step time and peak memory of diceloss's HausdorffDTLoss against MONAI's, forward + backward.

    python benchmarks/bench_hausdorff.py [--device cpu|cuda] [--threads 1] [--min-seconds 3] [--out DIR]

One step is ``loss = fn(x, y); loss.backward()``, the distance transform of the thresholded prediction
included (it runs every step). Workloads: 2D B=8, C=4, 256^2 and 3D B=2, C=4, 64^3, multiclass, softmax, class
0 left out (MONAI's default ``include_background=False``); the target is a few random ellipses per class and
the logits a noisy version of it, so the masks have the boundaries of real segmentations. Rows:

* ``MONAI HausdorffDTLoss``: ``HausdorffDTLoss(softmax=True, to_onehot_y=True)`` on (B, 1, *S) class indices
  (SciPy's transform on the CPU, four per (sample, class): foreground and background of prediction and target);
* ``diceloss HausdorffDTLoss``: ``HausdorffDTLoss(include_background=False, empty="zero")`` (MONAI's numbers)
  on (B, *S) class indices, its own choice of transform (CPU: SciPy in 2D, PyTorch for 3D from 2^17 voxels;
  CUDA: PyTorch);
* ``... (target_distance)``: the target's field precomputed in the data loader (not timed): only the
  prediction's transform runs per step;
* ``... (SciPy transform)`` / ``... (PyTorch transform)``: each transform forced (the PyTorch one is the one
  CUDA tensors use).

Time: per case and round, one warm-up step, then timed steps (at least 3, at least ``--min-seconds``); the
rounds (``--rounds``, odd ones in reverse order) run every case in turn, and the table gives the median and the
minimum over all the timed steps of a case. Memory: the
peak of the bytes torch allocates during one step (``benchmarks/run.py``'s ``_peak_extra_bytes``: the torch
profiler's allocation events on the CPU, ``max_memory_allocated`` on CUDA); the NumPy arrays of SciPy's
transform (both implementations use it on the CPU) are not torch allocations and are not counted. Writes
``results/hausdorff.json`` and ``results/hausdorff.md``. Wall-clock on a shared machine: compare the ratios of
one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import _peak_extra_bytes, machine_description  # noqa: E402

WORKLOADS = {"2D": (8, 4, (256, 256)), "3D": (2, 4, (64, 64, 64))}
BASELINE = "MONAI HausdorffDTLoss"


def make_case(B: int, C: int, spatial: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class indices: a few ellipses per foreground class on background; logits: the one-hot, blurred, plus noise."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij")
    t = torch.zeros(B, *spatial, dtype=torch.long)
    for b in range(B):
        for c in range(1, C):
            for _ in range(3):
                centre = [float(torch.rand((), generator=g)) * n for n in spatial]
                radius = [2 + float(torch.rand((), generator=g)) * n / 8 for n in spatial]
                inside = sum(((x - m) / r) ** 2 for x, m, r in zip(grids, centre, radius)) <= 1
                t[b][inside] = c
    onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1).float()
    x = 4 * onehot - 2 + 1.5 * torch.randn(onehot.shape, generator=g)
    return x, t


def make_loss(impl: str, x: torch.Tensor, t: torch.Tensor):
    """``(fn, target)`` for one row; fn(x, target) returns the loss."""
    import diceloss.hausdorff as H

    if impl == BASELINE:
        from monai.losses import HausdorffDTLoss

        loss = HausdorffDTLoss(softmax=True, to_onehot_y=True)
        return loss, t[:, None]
    loss = H.HausdorffDTLoss(include_background=False, empty="zero")
    if impl.endswith("(PyTorch transform)") or impl.endswith("(SciPy transform)"):
        scipy = impl.endswith("(SciPy transform)")
        H._use_scipy = lambda device, spatial: scipy
    if impl.endswith("(target_distance)"):
        onehot = torch.nn.functional.one_hot(t, x.shape[1]).movedim(-1, 1).bool()
        field = H.boundary_distance(onehot, spatial_dims=t.ndim - 1)
        return (lambda inp, tgt: loss(inp, tgt, target_distance=field)), t
    return loss, t


IMPLS = [
    BASELINE,
    "diceloss HausdorffDTLoss",
    "diceloss HausdorffDTLoss (target_distance)",
    "diceloss HausdorffDTLoss (SciPy transform)",
    "diceloss HausdorffDTLoss (PyTorch transform)",
]


def measure(impl: str, workload: str, device: str, min_seconds: float) -> dict:
    """One round of one case: the timed steps (ms), the peak bytes of one step, the loss value."""
    import diceloss.hausdorff as H

    saved = H._use_scipy
    try:
        B, C, spatial = WORKLOADS[workload]
        x, t = make_case(B, C, spatial)
        fn, target = make_loss(impl, x, t)
        x = x.to(device).requires_grad_(True)
        target = target.to(device)

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        def step():
            fn(x, target).backward()

        value = float(fn(x, target))
        x.grad = None
        step()  # warm-up
        times = []
        while len(times) < 3 or (sum(times) < min_seconds and len(times) < 50):
            x.grad = None
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        x.grad = None
        gc.collect()
        peak = _peak_extra_bytes(step, device)
    finally:
        H._use_scipy = saved
    return {"impl": impl, "workload": workload, "times_ms": [t * 1e3 for t in times],
            "peak_MiB": peak / 2**20, "logits_MiB": x.numel() * x.element_size() / 2**20, "loss": value}


def pooled(rounds: list[dict]) -> dict:
    """One row from the rounds of a case: median and minimum over every timed step of every round."""
    times = [t for r in rounds for t in r["times_ms"]]
    return {**{k: v for k, v in rounds[0].items() if k != "times_ms"}, "ms": statistics.median(times),
            "min_ms": min(times), "reps": len(times), "peak_MiB": max(r["peak_MiB"] for r in rounds)}


def markdown(rows: list[dict], meta: dict) -> str:
    base = {r["workload"]: r for r in rows if r["impl"] == BASELINE}
    lines = [
        f"HausdorffDTLoss, forward + backward per step; {meta['machine']}; {meta['device']}, "
        f"{meta['threads']} thread(s); torch {meta['torch']}, MONAI {meta['monai']}.",
        "",
        "| workload | implementation | ms / step (median) | min | x MONAI time | peak MiB (torch) | x MONAI memory "
        "| loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get(r["workload"])
        tr = f"{r['ms'] / b['ms']:.2f}" if b else "-"
        mr = f"{r['peak_MiB'] / b['peak_MiB']:.2f}" if b and b["peak_MiB"] else "-"
        B, C, S = WORKLOADS[r["workload"]]
        lines.append(
            f"| {r['workload']} B={B} C={C} {'x'.join(map(str, S))} | {r['impl']} | {r['ms']:.1f} | "
            f"{r['min_ms']:.1f} | {tr} | "
            f"{r['peak_MiB']:.1f} | {mr} | {r['loss']:.6g} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=2.0, help="per case and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every case, odd rounds in reverse order")
    ap.add_argument("--workloads", default="2D,3D")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    unknown = sorted(set(args.workloads.split(",")) - set(WORKLOADS))
    if unknown:
        ap.error(f"--workloads: expected names among {', '.join(WORKLOADS)}, got {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    import monai

    meta = {
        "machine": machine_description(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    # CUDA: the PyTorch transform is the default there, and SciPy would go through the host
    cases = [(w, i) for w in args.workloads.split(",") for i in IMPLS
             if not (args.device == "cuda" and i.endswith("transform)"))]
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in cases}
    for k in range(args.rounds):  # interleaved, so that a burst of load on a shared machine hits every case
        for workload, impl in cases if k % 2 == 0 else cases[::-1]:
            r = measure(impl, workload, args.device, args.min_seconds)
            runs[workload, impl].append(r)
            print(f"round {k} {workload:3} {impl:46} {statistics.median(r['times_ms']):9.1f} ms  "
                  f"{r['peak_MiB']:8.1f} MiB  loss {r['loss']:.6g}", flush=True)
    rows = [pooled(runs[c]) for c in cases]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else "_cuda"
    (out / f"hausdorff{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (out / f"hausdorff{suffix}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
