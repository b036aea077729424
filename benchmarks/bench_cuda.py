"""GPU benchmark of the Triton backend: the targets of the Triton issue, on one CUDA device.

Usage::

    python benchmarks/bench_cuda.py                  # all cases, float32 and bfloat16
    python benchmarks/bench_cuda.py --quick          # fewer repetitions
    python benchmarks/bench_cuda.py --cases H1 --dtypes float32

For each case (B, C, spatial, int64 class-index targets) and each input dtype it times, with CUDA
events (median of ``--reps`` after ``--warmup`` calls), ``loss = fn(x, y); loss.backward()`` for:

- diceloss ``DiceLoss`` / ``DiceCELoss`` with ``backend="triton"``, ``"fused"`` and ``"reference"``;
- MONAI ``DiceLoss(softmax=True, to_onehot_y=True)`` and ``DiceCELoss(softmax=True, to_onehot_y=True)``
  (skipped when MONAI is not installed);

and the Triton kernels alone (forward statistics, backward gradient). It reports each time, the
speed-up of the Triton backend over each other implementation, the peak extra memory of forward +
backward (``torch.cuda.max_memory_allocated`` above the inputs, as a multiple of the logits), and the
fraction of the device's copy bandwidth (``dst.copy_(src)`` on 1 GiB) that the Triton loss reaches
on DESIGN.md's traffic bound: logits and targets read twice, gradient written once, i.e.
``2*B*C*N*s + 16*B*N + B*C*N*s`` bytes for logits of ``s`` bytes and int64 targets.

Writes ``benchmarks/results/cuda_triton.json`` and prints a Markdown table. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name: (B, C, spatial). H1 is the Triton issue's target workload; W1..W4 the fused issue's, and
# GPU-sized batches of them.
CASES = {
    "H1": (2, 14, (128, 128, 128)),
    "W1": (8, 4, (256, 256)),
    "W2": (4, 21, (256, 256)),
    "W3": (2, 14, (64, 64, 64)),
    "W4": (1, 14, (128, 128, 128)),
    "W1-gpu": (64, 4, (256, 256)),
    "W2-gpu": (32, 21, (256, 256)),
    "W3-gpu": (16, 14, (64, 64, 64)),
    "C256": (2, 256, (32, 32, 32)),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _losses(kind: str):
    """name -> loss module; kind "dice" or "dice_ce"."""
    import diceloss

    cls = diceloss.DiceCELoss if kind == "dice_ce" else diceloss.DiceLoss
    out = {f"diceloss {cls.__name__} ({b})": cls(backend=b) for b in ("triton", "fused", "reference")}
    try:
        from monai.losses import DiceCELoss, DiceLoss

        monai_cls = DiceCELoss if kind == "dice_ce" else DiceLoss
        monai = monai_cls(softmax=True, to_onehot_y=True)
        out[f"MONAI {monai_cls.__name__}"] = lambda x, y: monai(x, y[:, None])
    except ImportError:
        pass
    return out


def _time(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def copy_bandwidth() -> float:
    """GB/s of dst.copy_(src) on 1 GiB (bytes read + written)."""
    n = (1 << 30) // 4
    buffers = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")

    def copy():
        buffers[1].copy_(buffers[0])

    ms = statistics.median(_time(copy, 3, 10))
    buffers[0].resize_(0)  # free the 2 GiB before the cases run
    buffers[1].resize_(0)
    torch.cuda.empty_cache()
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def bound_bytes(B: int, C: int, N: int, itemsize: int) -> int:
    return 3 * B * C * N * itemsize + 16 * B * N


def run_case(name: str, dtype: torch.dtype, warmup: int, reps: int) -> list[dict]:
    from diceloss import _layout
    from diceloss.stats import StatsRequest
    from diceloss.stats import triton as tk

    B, C, spatial = CASES[name]
    N = 1
    for s in spatial:
        N *= s
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (2 * torch.randn((B, C, *spatial), generator=g, device="cuda")).to(dtype).requires_grad_()
    y = torch.randint(0, C, (B, *spatial), generator=g, device="cuda")
    logits_bytes = x.numel() * x.element_size()
    rows = []

    # the kernels alone
    prep = _layout.prepare(x.detach(), y, mode="multiclass", from_logits=True)
    for request_name, request in (("dice", StatsRequest()), ("dice_ce", StatsRequest(cross_entropy=True))):
        args = (prep.logits, prep.target, None, "multiclass", "softmax", None, False, False, request.cross_entropy,
                0.0, None)
        stats = tk.triton_stats(*args)
        grad = torch.randn_like(stats)
        fwd = statistics.median(_time(lambda: tk.triton_stats(*args), warmup, reps))  # noqa: B023
        bwd = statistics.median(_time(lambda: torch.ops.diceloss.triton_stats_backward(grad, *args), warmup, reps))  # noqa: B023
        rows.append({"case": name, "dtype": str(dtype).split(".")[-1], "group": request_name,
                     "impl": f"triton kernels: forward ({request_name})", "ms": fwd,
                     "bytes": B * C * N * x.element_size() + 8 * B * N})
        rows.append({"case": name, "dtype": str(dtype).split(".")[-1], "group": request_name,
                     "impl": f"triton kernels: backward ({request_name})", "ms": bwd,
                     "bytes": 2 * B * C * N * x.element_size() + 8 * B * N})

    for kind in ("dice", "dice_ce"):
        for impl, fn in _losses(kind).items():
            row = {"case": name, "dtype": str(dtype).split(".")[-1], "group": kind, "impl": impl,
                   "bytes": bound_bytes(B, C, N, x.element_size())}

            def step(fn=fn):
                x.grad = None
                fn(x, y).backward()

            try:
                row["ms"] = statistics.median(_time(step, warmup, reps))
                x.grad = None
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step()
                torch.cuda.synchronize()
                row["peak_x_logits"] = (torch.cuda.max_memory_allocated() - base) / logits_bytes
            except (RuntimeError, ValueError) as err:  # out of memory, or a backend that does not apply
                row["skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                torch.cuda.empty_cache()
            x.grad = None
            rows.append(row)
    return rows


def summarise(rows: list[dict], bandwidth: float) -> None:
    for row in rows:
        if "ms" in row:
            row["GBps"] = row["bytes"] / (row["ms"] * 1e-3) / 1e9
            row["bound_fraction"] = row["GBps"] / bandwidth
    for row in rows:
        if "ms" not in row or row["impl"].startswith("triton kernels"):
            continue
        ours = [r for r in rows if r["case"] == row["case"] and r["dtype"] == row["dtype"]
                and r["group"] == row["group"] and r["impl"].endswith("(triton)") and "ms" in r]
        if ours:
            row["triton_speedup"] = row["ms"] / ours[0]["ms"]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['device']} (driver {meta['driver']}, torch {meta['torch']}, "
        f"triton {meta['triton']}); copy bandwidth {meta['copy_GBps']:.0f} GB/s.",
        "",
        "| case | dtype | implementation | ms | x slower than triton | peak extra / logits | "
        "fraction of copy bandwidth on the bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['skipped']} | | | |")
            continue
        speed = f"{r['triton_speedup']:.2f}" if "triton_speedup" in r else ""
        peak = f"{r['peak_x_logits']:.2f}" if "peak_x_logits" in r else ""
        lines.append(f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['ms']:.3f} | {speed} | {peak} | "
                     f"{r['bound_fraction']:.0%} |")
    return "\n".join(lines)


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 warm-up calls, 5 repetitions")
    parser.add_argument("--out", default=str(RESULTS / "cuda_triton.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda.py needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if args.quick:
        args.warmup, args.reps = 2, 5
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; expected some of {list(CASES)}")
    import triton

    bandwidth = copy_bandwidth()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(),
        "driver": _driver(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "copy_GBps": bandwidth,
    }
    rows = []
    for case in cases:
        for dtype_name in args.dtypes.split(","):
            rows += run_case(case, DTYPES[dtype_name], args.warmup, args.reps)
            torch.cuda.empty_cache()
    summarise(rows, bandwidth)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
