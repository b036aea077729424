"""Per-step time and peak memory of Skeleton Recall, the boundary loss and the L1 calibration loss against their peers.

    python benchmarks/bench_sum_losses_a.py [--device cpu|cuda] [--threads 1] [--min-seconds 1] [--rounds 3]

One step is ``loss = fn(x, y); loss.backward()``. The target-side maps (tubed skeleton, signed distance maps) are
made once, before timing, as a data loader would: the transforms are not timed, on either side. Workloads: 2D
B=8, C=4, 256^2 and 3D B=2, C=4, 64^3, float32 logits, multiclass, softmax; the target is a few random ellipses
(blobs for the boundary and calibration losses) or bars (thin structures for Skeleton Recall) per class.

Peers, each loaded from its authors' source tree when the variable is set (else the row reads n/a):

* Skeleton Recall: the authors' ``SoftSkeletonRecallLoss`` (``SKELETON_RECALL_SRC``, MIC-DKFZ/Skeleton-Recall), on
  their (B, 1, *S) int16 skeleton label map; diceloss on the same map, ``include_background=False`` (theirs drops
  class 0).
* boundary: MONAI's ``BoundaryLoss`` (installed) with its per-call distance transform replaced by the precomputed
  maps (so only the loss is timed), and the authors' ``SurfaceLoss`` (``BOUNDARY_LOSS_SRC``, LIVIAETS/boundary-loss;
  2D only: its einsum is "bkwh"); diceloss with ``distance_map=`` and the background kept, as MONAI's default.
* calibration: the authors' ``HardL1ACELoss`` / ``SoftL1ACELoss`` (``ACE_LOSS_SRC``, cai4cai/Average-Calibration-
  Losses; on MONAI), on one-hot targets (theirs need them); diceloss on class indices.

diceloss rows: ``backend="fused"`` and ``"reference"`` (plain autograd), ``"triton"`` on CUDA. The fused backend of
Skeleton Recall and the boundary loss is the overlap engine's compiled CPU kernel (their sums are its I and G with the
map in the place of the target); that of the calibration loss is a chunked PyTorch path (no kernel covers bins yet).

Time: median and minimum of every timed step of every round (rounds interleave the cases, so that a burst of load on
a shared machine hits all of them; the minimum is the less noisy there). Memory: the peak of the bytes torch
allocates during one step (``run.py``'s ``_peak_extra_bytes``), in MiB and as a multiple of the logits. Writes
``results/sum_losses_a.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "peers"))
from run import _peak_extra_bytes, machine_description  # noqa: E402

WORKLOADS = {"2D": (8, 4, (256, 256)), "3D": (2, 4, (64, 64, 64))}


# ----------------------------------------------------------------------------------------------
# cases


def _grids(spatial):
    return torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij")


def make_case(B: int, C: int, spatial, thin: bool, seed: int = 0):
    """(logits, class indices): ellipses (or thin bars) per foreground class; logits = noisy one-hot."""
    g = torch.Generator().manual_seed(seed)
    grids = _grids(spatial)
    t = torch.zeros(B, *spatial, dtype=torch.long)
    for b in range(B):
        for c in range(1, C):
            for _ in range(3):
                centre = [float(torch.rand((), generator=g)) * n for n in spatial]
                radius = [2 + float(torch.rand((), generator=g)) * n / 8 for n in spatial]
                if thin:  # a bar: thin along every axis but one
                    axis = int(torch.randint(0, len(spatial), (), generator=g))
                    radius = [r if k == axis else 1.5 for k, r in enumerate(radius)]
                inside = sum(((x - m) / r) ** 2 for x, m, r in zip(grids, centre, radius)) <= 1
                t[b][inside] = c
    onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1).float()
    x = 4 * onehot - 2 + 1.5 * torch.randn(onehot.shape, generator=g)
    return x.contiguous(), t  # one_hot(...).movedim leaves the class axis last in memory


def _authors(variable: str, path: str, name: str, stubs=None):
    import _source_tree

    if not os.environ.get(variable):
        return None
    return _source_tree.load(_source_tree.source_root(variable, "") / path, name, stubs)


def make_fn(loss: str, impl: str, x: torch.Tensor, t: torch.Tensor):
    """fn(x) -> the loss of one row, or a string saying why the row cannot run."""
    from diceloss import functional as DF
    from diceloss.transforms import signed_distance, tubed_skeleton

    B, C = x.shape[:2]
    if loss == "skeleton_recall":
        skel = torch.stack([tubed_skeleton(t[b]) for b in range(B)])
        if impl == "authors":
            mod = _authors("SKELETON_RECALL_SRC", "nnunetv2/training/loss/dice.py", "bench_sr_authors",
                           {"nnunetv2.utilities.ddp_allgather": {"AllGatherGrad": None}})
            if mod is None:
                return "n/a: set SKELETON_RECALL_SRC"
            fn = mod.SoftSkeletonRecallLoss(apply_nonlin=lambda z: torch.softmax(z, 1), batch_dice=False, do_bg=False,
                                            smooth=1e-5, ddp=False)
            s16 = skel[:, None].to(torch.int16)
            return lambda z: fn(z, s16)
        return lambda z: DF.skeleton_recall_loss(z, t, skeleton=skel, backend=impl)
    if loss == "boundary":
        phi = torch.stack([signed_distance(t[b], num_classes=C, convention="kervadec") for b in range(B)])
        if impl == "MONAI":
            from monai.losses import BoundaryLoss

            fn = BoundaryLoss(softmax=True, to_onehot_y=True)
            fn.compute_distance_map = lambda target: phi  # the transform precomputed, as for diceloss
            t1 = t[:, None]
            return lambda z: fn(z, t1)
        if impl == "authors":
            if len(t.shape) != 3:
                return "n/a: their SurfaceLoss is 2D only"
            import numpy as np

            if not hasattr(np, "bool"):
                np.bool = bool
            if _authors("BOUNDARY_LOSS_SRC", "utils.py", "utils") is None:  # their losses.py imports it so
                return "n/a: set BOUNDARY_LOSS_SRC"
            mod = _authors("BOUNDARY_LOSS_SRC", "losses.py", "bench_bl_authors")
            fn = mod.SurfaceLoss(idc=list(range(C)))
            return lambda z: fn(torch.softmax(z, 1), phi)
        return lambda z: DF.boundary_loss(z, t, distance_map=phi, include_background=True, backend=impl)
    soft = loss == "calibration_soft"
    if impl == "authors":
        mod = _authors("ACE_LOSS_SRC", f"src/losses/{'soft' if soft else 'hard'}l1ace.py", f"bench_ace_{soft}")
        if mod is None:
            return "n/a: set ACE_LOSS_SRC"
        fn = (mod.SoftL1ACELoss if soft else mod.HardL1ACELoss)(num_bins=20, softmax=True)
        onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1).float()
        return lambda z: fn(z, onehot)
    return lambda z: DF.calibration_loss(z, t, soft=soft, backend=impl)


LOSSES = ("skeleton_recall", "boundary", "calibration_hard", "calibration_soft")
PEERS = {"skeleton_recall": ["authors"], "boundary": ["MONAI", "authors"], "calibration_hard": ["authors"],
         "calibration_soft": ["authors"]}


def measure(loss: str, impl: str, workload: str, device: str, min_seconds: float) -> dict:
    B, C, spatial = WORKLOADS[workload]
    x, t = make_case(B, C, spatial, thin=loss == "skeleton_recall")
    out = {"loss": loss, "impl": impl, "workload": workload}
    fn = make_fn(loss, impl, x, t)
    if isinstance(fn, str):
        return {**out, "skipped": fn}
    x = x.to(device).requires_grad_(True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        fn(x).backward()

    value = float(fn(x))
    step()
    times = []
    while len(times) < 3 or (sum(times) < min_seconds and len(times) < 30):
        x.grad = None
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    x.grad = None
    gc.collect()
    peak = _peak_extra_bytes(step, device)
    return {**out, "times_ms": [s * 1e3 for s in times], "peak_MiB": peak / 2**20,
            "logits_MiB": x.numel() * x.element_size() / 2**20, "value": value}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Skeleton Recall, boundary and L1 calibration losses, forward + backward per step (maps precomputed); "
        f"{meta['machine']}; {meta['device']}, {meta['threads']} thread(s); torch {meta['torch']}.",
        "",
        "| loss | workload | implementation | ms / step | min ms | x peer time (median; min) | peak MiB | x logits "
        "| x peer memory | value |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        B, C, S = WORKLOADS[r["workload"]]
        wl = f"{r['workload']} B={B} C={C} {'x'.join(map(str, S))}"
        if "skipped" in r:
            lines.append(f"| {r['loss']} | {wl} | {r['impl']} | {r['skipped']} | | | | | | |")
            continue
        peer = next((p for p in rows if p["loss"] == r["loss"] and p["workload"] == r["workload"]
                     and p["impl"] == PEERS[r["loss"]][0] and "skipped" not in p), None)
        tr = f"{r['ms'] / peer['ms']:.2f}; {r['min_ms'] / peer['min_ms']:.2f}" if peer else "-"
        mr = f"{r['peak_MiB'] / peer['peak_MiB']:.2f}" if peer and peer["peak_MiB"] else "-"
        lines.append(
            f"| {r['loss']} | {wl} | {r['impl']} | {r['ms']:.1f} | {r['min_ms']:.1f} | {tr} | {r['peak_MiB']:.1f} | "
            f"{r['peak_MiB'] / r['logits_MiB']:.2f} | {mr} | {r['value']:.6g} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=1.0, help="per case and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workloads", default="2D,3D")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = {
        "machine": machine_description(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    ours = ["fused", "reference"] + (["triton"] if args.device == "cuda" else [])
    cases = [(loss, impl, w) for loss in args.losses.split(",") for w in args.workloads.split(",")
             for impl in PEERS[loss] + ours]
    runs: dict[tuple, list[dict]] = {c: [] for c in cases}
    for k in range(args.rounds):
        for case in (cases if k % 2 == 0 else cases[::-1]):
            r = measure(*case, args.device, args.min_seconds)
            runs[case].append(r)
            print(json.dumps({key: v for key, v in r.items() if key != "times_ms"}), flush=True)
    rows = []
    for case in cases:
        rs = runs[case]
        if "skipped" in rs[0]:
            rows.append(rs[0])
            continue
        times = [s for r in rs for s in r["times_ms"]]
        rows.append({**{key: v for key, v in rs[0].items() if key != "times_ms"}, "ms": statistics.median(times),
                     "min_ms": min(times), "reps": len(times), "peak_MiB": max(r["peak_MiB"] for r in rs)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sum_losses_a.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (out / "sum_losses_a.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
