"""Per-step time and peak memory of BlobLoss, UnifiedFocalLoss and GeneralizedWassersteinDiceLoss against peers.

    python benchmarks/bench_sum_losses_b.py [--threads 1] [--min-seconds 1] [--rounds 3] [--out DIR]
    BLOB_LOSS_SRC=/path/to/neuronflow/blob_loss python benchmarks/bench_sum_losses_b.py   # with the authors' loop

One step is ``loss = fn(x, y); loss.backward()`` on the CPU, float32 logits. Workloads: 2D B=8, 256^2 and 3D
B=2, 64^3, C=4 classes (multiclass) or one channel (binary); targets are random ellipses (blobs), the logits a
noisy version of them. Rows, per loss:

* Generalized Wasserstein Dice, multiclass, a 4 x 4 distance matrix: MONAI's ``GeneralizedWassersteinDiceLoss``
  against diceloss's (fused path; and the reference backend, plain autograd);
* unified focal, binary: MONAI's ``AsymmetricUnifiedFocalLoss`` (probabilities only: the sigmoid is timed with
  it) against diceloss's ``UnifiedFocalLoss(mode="binary")`` on the logits; diceloss multiclass has no peer
  (MONAI's is binary, the authors' is TensorFlow);
* blob loss, binary, instance maps given (computed in the data loader, not timed): the authors' loop
  (neuronflow/blob_loss ``compute_blob_loss_multi`` with MONAI's ``DiceLoss`` as criterion, plus the global
  ``DiceLoss``; its file is read from ``BLOB_LOSS_SRC``, a checkout of the repository: the project does not
  ship it) against diceloss's ``BlobLoss(mode="binary")``.

Time: per case and round one warm-up step, then timed steps (at least 3 and ``--min-seconds``); the table gives
the median over all timed steps. Memory: the peak of the bytes torch allocates during one step
(``benchmarks/run.py``'s ``_peak_extra_bytes``), also as a multiple of the logits' size (the gradient, one
logits' size, is part of it). Writes ``results/sum_losses_b.json`` and ``results/sum_losses_b.md``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import _cpu_name, _peak_extra_bytes  # noqa: E402

WORKLOADS = {"2D": (8, (256, 256)), "3D": (2, (64, 64, 64))}
C = 4
M4 = [[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.5, 0.7], [1.0, 0.5, 0.0, 0.6], [1.0, 0.7, 0.6, 0.0]]


def make_labels(B: int, spatial: tuple[int, ...], classes: int, blobs: int, seed: int = 0) -> torch.Tensor:
    """Class indices: ``blobs`` random ellipses per foreground class on the background."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij")
    t = torch.zeros(B, *spatial, dtype=torch.long)
    for b in range(B):
        for c in range(1, classes):
            for _ in range(blobs):
                centre = [float(torch.rand((), generator=g)) * n for n in spatial]
                radius = [1.5 + float(torch.rand((), generator=g)) * n / 16 for n in spatial]
                inside = sum(((x - m) / r) ** 2 for x, m, r in zip(grids, centre, radius)) <= 1
                t[b][inside] = c
    return t


def logits_of(t: torch.Tensor, classes: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if classes == 1:
        return (4 * t[:, None].float() - 2 + 1.5 * torch.randn((t.shape[0], 1, *t.shape[1:]), generator=g))
    onehot = torch.nn.functional.one_hot(t, classes).movedim(-1, 1).float()
    # contiguous (B, C, *S), as a network's output usually is
    return (4 * onehot - 2 + 1.5 * torch.randn(onehot.shape, generator=g)).contiguous()


def _authors_blob_loss():
    src = os.environ.get("BLOB_LOSS_SRC")
    if not src:
        return None
    spec = importlib.util.spec_from_file_location("neuronflow_blob_loss", Path(src) / "blob_loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(workload: str):
    """(loss, implementation, step function, logits) of every row of a workload; fn() runs one step."""
    import diceloss
    from diceloss.transforms import label_components

    B, spatial = WORKLOADS[workload]
    rows = []

    # Generalized Wasserstein Dice, multiclass
    t = make_labels(B, spatial, C, 3)
    x = logits_of(t, C)
    from monai.losses import GeneralizedWassersteinDiceLoss as MonaiGWDL

    monai_gwdl = MonaiGWDL(torch.tensor(M4))
    rows.append(("GWDL", "MONAI GeneralizedWassersteinDiceLoss", lambda xx, tt=t: monai_gwdl(xx, tt), x))
    for backend in ("fused", "reference"):
        ours = diceloss.GeneralizedWassersteinDiceLoss(dist_matrix=M4, backend=backend)
        rows.append(("GWDL", f"diceloss GeneralizedWassersteinDiceLoss ({backend})",
                     lambda xx, tt=t, f=ours: f(xx, tt), x))

    # unified focal, binary (MONAI) and multiclass (diceloss only)
    tb = (make_labels(B, spatial, 2, 6, seed=2) > 0).long()
    xb = logits_of(tb, 1)
    yb = tb[:, None].float()
    from monai.losses import AsymmetricUnifiedFocalLoss

    monai_uf = AsymmetricUnifiedFocalLoss(delta=0.6, gamma=0.5)
    rows.append(("unified focal (binary)", "MONAI AsymmetricUnifiedFocalLoss (sigmoid + loss)",
                 lambda xx, yy=yb: monai_uf(torch.sigmoid(xx), yy), xb))
    ours_uf = diceloss.UnifiedFocalLoss("binary")
    rows.append(("unified focal (binary)", "diceloss UnifiedFocalLoss (fused)", lambda xx, yy=yb: ours_uf(xx, yy), xb))
    ours_ufm = diceloss.UnifiedFocalLoss()
    rows.append(("unified focal (multiclass)", "diceloss UnifiedFocalLoss (fused)",
                 lambda xx, tt=t: ours_ufm(xx, tt), x))

    # blob loss, binary, instance maps from the data loader
    ids = torch.stack([label_components(tb[b].bool())[0] for b in range(B)])[:, None]
    authors = _authors_blob_loss()
    if authors is not None:
        from monai.losses import DiceLoss

        dice = DiceLoss(include_background=True, sigmoid=False)

        def authors_step(xx, yy=yb, ii=ids):
            p = torch.sigmoid(xx)
            return dice(p, yy) + authors.compute_blob_loss_multi(dice, p, ii)

        rows.append(("blob (binary)", "authors' blob loss (loop over blobs) + MONAI DiceLoss", authors_step, xb))
    for backend in ("fused", "reference"):
        ours_b = diceloss.BlobLoss("binary", backend=backend)
        rows.append(("blob (binary)", f"diceloss BlobLoss ({backend})",
                     lambda xx, yy=yb, ii=ids, f=ours_b: f(xx, yy, instances=ii), xb))
    return rows, float(ids.flatten(1).amax(1).float().mean())


def step(fn, x: torch.Tensor):
    xx = x.detach().requires_grad_(True)
    loss = fn(xx)
    loss.backward()
    return float(loss.detach())


def measure(fn, x: torch.Tensor, min_seconds: float) -> list[float]:
    step(fn, x)  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        step(fn, x)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for workload in WORKLOADS:
        rows, blobs = cases(workload)
        times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
        for r in range(args.rounds):
            order = range(len(rows)) if r % 2 == 0 else reversed(range(len(rows)))
            for i in order:
                times[i] += measure(rows[i][2], rows[i][3], args.min_seconds)
        for i, (loss, impl, fn, x) in enumerate(rows):
            gc.collect()
            peak = _peak_extra_bytes(lambda f=fn, xx=x: step(f, xx), "cpu")
            results.append(dict(workload=workload, shape=list(x.shape), blobs_per_sample=blobs, loss=loss, impl=impl,
                                ms=1e3 * statistics.median(times[i]), ms_min=1e3 * min(times[i]),
                                peak_bytes=peak, logits_bytes=x.numel() * x.element_size(), value=step(fn, x)))
            print(f"{workload} {loss:28s} {impl:58s} {results[-1]['ms']:9.1f} ms  {peak / 2**20:8.1f} MiB",
                  flush=True)
    meta = dict(cpu=_cpu_name(), threads=args.threads, torch=torch.__version__, python=platform.python_version(),
                avx512="avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sum_losses_b.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    (args.out / "sum_losses_b.md").write_text(table(results, meta))
    print(table(results, meta))
    return 0


def table(results: list[dict], meta: dict) -> str:
    lines = [
        f"Blob, unified focal and Generalized Wasserstein Dice losses, forward + backward per step, float32; "
        f"{meta['cpu']}, AVX-512 {'yes' if meta['avx512'] else 'no'}, {meta['threads']} thread(s), "
        f"torch {meta['torch']}.",
        "",
        "| workload | loss | implementation | ms / step (median) | x peer time | peak MiB (torch) | x logits | "
        "x peer memory | loss value |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peer = next((p for p in results if p["workload"] == r["workload"] and p["loss"] == r["loss"]
                     and not p["impl"].startswith("diceloss")), None)
        shape = "x".join(str(s) for s in r["shape"])
        rt = f"{r['ms'] / peer['ms']:.2f}" if peer else "n/a"
        rm = f"{r['peak_bytes'] / peer['peak_bytes']:.2f}" if peer and peer["peak_bytes"] else "n/a"
        lines.append(f"| {r['workload']} {shape} | {r['loss']} | {r['impl']} | {r['ms']:.1f} | {rt} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {r['peak_bytes'] / r['logits_bytes']:.2f} | {rm} | "
                     f"{r['value']:.6f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
