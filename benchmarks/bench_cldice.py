"""Per-step time and peak memory of diceloss's ClDiceLoss against MONAI's SoftclDiceLoss, forward + backward.

    python benchmarks/bench_cldice.py [--device cpu|cuda] [--threads 1] [--iterations 3,10] [--rounds 2] [--out DIR]

One step is ``loss = fn(x, y); loss.backward()``: the softmax, both soft skeletons (the target's too: neither
implementation is given one) and the four sums. Workloads: 2D B=8, C=4, 256^2 and 3D B=2, C=4, 64^3,
multiclass, class 0 left out; the target is a few straight tubes of radius 0-3 per foreground class on the
background, the logits a noisy version of it. Each at k = ``--iterations`` rounds of the soft skeleton. Rows:

* ``MONAI SoftclDiceLoss``: ``SoftclDiceLoss(iter_=k, softmax=True, to_onehot_y=True, include_background=False)``
  on (B, 1, *S) class indices: plain autograd through k rounds of max-pool stencils;
* ``diceloss ClDiceLoss``: ``ClDiceLoss(iterations=k)`` on (B, *S) class indices (background left out by
  default; per-class clDice, not MONAI's number): the soft skeleton's backward recomputes the rounds;
* ``diceloss compat SoftclDiceLoss``: ``diceloss.compat.monai.SoftclDiceLoss`` with MONAI's arguments and
  numbers (the loss column equals MONAI's).

Time: per case and round, one warm-up step, then timed steps (at least 3, at least ``--min-seconds``); the
rounds (odd ones in reverse order) run every case in turn, and the table gives the median and the minimum over
all the timed steps of a case. Memory: the peak of the bytes torch allocates during one step
(``benchmarks/run.py``'s ``_peak_extra_bytes``: the torch profiler's allocation events on the CPU,
``max_memory_allocated`` on CUDA), the gradient of the logits included. Writes ``results/cldice.json`` and
``results/cldice.md``. Wall-clock on a shared machine: compare the ratios of one run.
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
BASELINE = "MONAI SoftclDiceLoss"
IMPLS = [BASELINE, "diceloss ClDiceLoss", "diceloss compat SoftclDiceLoss"]
TARGET_MEMORY_RATIO = 1 / 3  # the goal at k = 10: at most a third of MONAI's peak


def make_case(B: int, C: int, spatial: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class indices: 3 straight tubes (radius 0-3) per foreground class; logits: the one-hot, scaled, plus noise."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij"))
    shape = (-1,) + (1,) * len(spatial)
    t = torch.zeros(B, *spatial, dtype=torch.long)
    for b in range(B):
        for c in range(1, C):
            for _ in range(3):
                a = torch.rand(len(spatial), generator=g) * torch.tensor(spatial, dtype=torch.float32)
                u = torch.randn(len(spatial), generator=g)
                u = u / u.norm()
                r = float(torch.randint(0, 4, (), generator=g))
                rel = grids - a.view(shape)
                along = (rel * u.view(shape)).sum(0, keepdim=True)
                dist = (rel - along * u.view(shape)).norm(dim=0)  # distance to the tube's axis
                t[b][dist <= r + 0.5] = c
    onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1).float()
    x = 4 * onehot - 2 + 1.5 * torch.randn(onehot.shape, generator=g)
    return x, t


def make_loss(impl: str, k: int, t: torch.Tensor):
    """``(fn, target)`` for one row; fn(x, target) returns the loss."""
    if impl == BASELINE:
        from monai.losses import SoftclDiceLoss

        return SoftclDiceLoss(iter_=k, softmax=True, to_onehot_y=True, include_background=False), t[:, None]
    if impl == "diceloss compat SoftclDiceLoss":
        from diceloss.compat.monai import SoftclDiceLoss

        return SoftclDiceLoss(iter_=k, softmax=True, to_onehot_y=True, include_background=False), t[:, None]
    import diceloss

    return diceloss.ClDiceLoss(iterations=k), t


def measure(impl: str, workload: str, k: int, device: str, min_seconds: float) -> dict:
    """One round of one case: the timed steps (ms), the peak bytes of one step, the loss value."""
    B, C, spatial = WORKLOADS[workload]
    x, t = make_case(B, C, spatial)
    fn, target = make_loss(impl, k, t)
    x = x.to(device).requires_grad_(True)
    target = target.to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        fn(x, target).backward()

    with torch.no_grad():
        value = float(fn(x, target))
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
    return {"impl": impl, "workload": workload, "iterations": k, "times_ms": [s * 1e3 for s in times],
            "peak_MiB": peak / 2**20, "logits_MiB": x.numel() * x.element_size() / 2**20, "loss": value}


def pooled(rounds: list[dict]) -> dict:
    """One row from the rounds of a case: median and minimum over every timed step of every round."""
    times = [t for r in rounds for t in r["times_ms"]]
    return {**{k: v for k, v in rounds[0].items() if k != "times_ms"}, "ms": statistics.median(times),
            "min_ms": min(times), "reps": len(times), "peak_MiB": max(r["peak_MiB"] for r in rounds)}


def markdown(rows: list[dict], meta: dict) -> str:
    base = {(r["workload"], r["iterations"]): r for r in rows if r["impl"] == BASELINE}
    lines = [
        f"Soft clDice, forward + backward per step; {meta['machine']}; {meta['device']}, "
        f"{meta['threads']} thread(s); torch {meta['torch']}, MONAI {meta['monai']}.",
        "",
        "| workload | k | implementation | ms / step (median) | min | x MONAI time | peak MiB (torch) | "
        "x MONAI memory | peak / logits | loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get((r["workload"], r["iterations"]))
        tr = f"{r['ms'] / b['ms']:.2f}" if b else "-"
        mr = f"{r['peak_MiB'] / b['peak_MiB']:.3f}" if b and b["peak_MiB"] else "-"
        B, C, S = WORKLOADS[r["workload"]]
        lines.append(
            f"| {r['workload']} B={B} C={C} {'x'.join(map(str, S))} | {r['iterations']} | {r['impl']} | "
            f"{r['ms']:.1f} | {r['min_ms']:.1f} | {tr} | {r['peak_MiB']:.1f} | {mr} | "
            f"{r['peak_MiB'] / r['logits_MiB']:.1f} | {r['loss']:.6g} |"
        )
    ours = [(r, base[r["workload"], r["iterations"]]) for r in rows
            if r["impl"] == "diceloss ClDiceLoss" and (r["workload"], r["iterations"]) in base]
    if ours:
        lines.append("")
        for r, b in ours:
            ratio = r["peak_MiB"] / b["peak_MiB"]
            verdict = "met" if ratio <= TARGET_MEMORY_RATIO else "NOT met"
            goal = f" (goal at k = 10: <= {TARGET_MEMORY_RATIO:.3f}: {verdict})"
            lines.append(f"- {r['workload']}, k = {r['iterations']}: ClDiceLoss peak memory {ratio:.3f} x MONAI's, "
                         f"time {r['ms'] / b['ms']:.2f} x{goal if r['iterations'] == 10 else ''}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", default="3,10", help="rounds of the soft skeleton, comma-separated")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="per case and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over every case, odd rounds in reverse order")
    ap.add_argument("--workloads", default="2D,3D")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
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
    impls = args.impls.split(",")
    cases = [(w, k, i) for w in args.workloads.split(",") for k in map(int, args.iterations.split(",")) for i in impls]
    runs: dict[tuple, list[dict]] = {c: [] for c in cases}
    for r in range(args.rounds):  # interleaved, so that a burst of load on a shared machine hits every case
        for workload, k, impl in cases if r % 2 == 0 else cases[::-1]:
            m = measure(impl, workload, k, args.device, args.min_seconds)
            runs[workload, k, impl].append(m)
            print(f"round {r} {workload:3} k={k:<3} {impl:32} {statistics.median(m['times_ms']):9.1f} ms  "
                  f"{m['peak_MiB']:8.1f} MiB  loss {m['loss']:.6g}", flush=True)
    rows = [pooled(runs[c]) for c in cases]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else "_cuda"
    (out / f"cldice{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (out / f"cldice{suffix}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
