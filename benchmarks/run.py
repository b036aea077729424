"""Speed and memory of diceloss against MONAI, nnU-Net and kornia, forward + backward.

Usage (``make bench`` runs it with the peers installed)::

    python benchmarks/run.py                      # all workloads, CPU, 2 threads
    python benchmarks/run.py --workloads W1,W3 --rounds 3
    python benchmarks/run.py --device cuda        # GPU tables, adds backend="triton"
    python benchmarks/run.py --quick              # fewer repetitions (smoke test)
    python benchmarks/run.py --isa avx2           # one instruction-set level of the kernel (default: each
                                                  # level this CPU runs, one table per level)

Each (implementation, workload) case runs in a fresh child process (the parent never imports torch):
warm-up calls first, then timed calls of ``loss = fn(x, y); loss.backward()`` (``x.grad = None``
outside the timed region), the median reported; then one more call under ``torch.profiler`` with
``profile_memory=True`` gives the peak of the bytes allocated by torch during forward + backward
(the allocation and free events in time order, peak of the running sum), including the gradient of
the logits (which alone is 1 x the logits). With ``--rounds R`` every case runs in R processes, odd
rounds in reverse order, and the median over all timed calls is reported.

Instruction-set levels: the prebuilt CPU kernel carries several (AVX-512, AVX2, baseline x86-64) and picks the
widest the CPU runs. By default every level this CPU runs is benchmarked in turn, each child process with
``DICELOSS_CPU_ISA=<level>`` and, so that the peers run as they would on a CPU of that level,
``ATEN_CPU_CAPABILITY=<level>`` (avx512, avx2, default) for torch's own kernels (``--peer-isa native`` leaves
torch at its widest). Each level gets its own table and files (``results_<level>.*``), headed with the CPU's
name and the levels it has; ``results.*`` hold the widest level's.

The traffic bound is DESIGN.md's two-pass bound: read the logits and the targets twice, write the
gradient once (``12*B*C*N + 16*B*N`` bytes at float32 with int64 targets), divided by the copy
bandwidth measured here (``dst.copy_(src)`` on 256 MiB). Results go to ``benchmarks/results/``
(``results.json``, ``results.csv``, ``results.png``) and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import csv
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

# name: (B, C, spatial, kind); kind "multiclass" uses int64 class-index targets of shape (B, *S),
# "binary" one logit channel with float {0, 1} targets of shape (B, 1, *S) (the same tensor for every peer)
WORKLOADS = {
    "W1": (8, 4, (256, 256), "multiclass"),
    "W2": (4, 21, (256, 256), "multiclass"),
    "W3": (2, 14, (64, 64, 64), "multiclass"),
    "W4": (1, 14, (128, 128, 128), "multiclass"),
    "W5": (16, 1, (256, 256), "binary"),
}

# implementation name -> (group, description); group "dice" rows are compared with DiceLoss,
# "dice_ce" rows with DiceCELoss
IMPLS = {
    "diceloss DiceLoss": ("dice", "diceloss.DiceLoss(), backend='auto' (fused, compiled kernel)"),
    "diceloss DiceLoss (PyTorch fallback)": ("dice", "DICELOSS_NO_CPP=1, backend='fused': the chunked PyTorch path"),
    "diceloss DiceLoss (reference)": ("dice", "backend='reference': plain autograd over a one-hot target"),
    "diceloss DiceLoss (triton)": ("dice", "backend='triton' (CUDA only)"),
    "MONAI DiceLoss": ("dice", "DiceLoss(softmax=True, to_onehot_y=True) | DiceLoss(sigmoid=True)"),
    "nnU-Net MemoryEfficientSoftDiceLoss": (
        "dice",
        "MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5) | "
        "(torch.sigmoid, do_bg=True)",
    ),
    "kornia dice_loss": ("dice", "kornia.losses.dice_loss(x, y) (2D multiclass only)"),
    "diceloss DiceCELoss": ("dice_ce", "diceloss.DiceCELoss(), backend='auto'"),
    "MONAI DiceCELoss": ("dice_ce", "DiceCELoss(softmax=True, to_onehot_y=True) | DiceCELoss(sigmoid=True)"),
    "nnU-Net DC_and_CE_loss": (
        "dice_ce",
        "DC_and_CE_loss({batch_dice: True, smooth: 1e-5, do_bg: False, ddp: False}, {}, "
        "dice_class=MemoryEfficientSoftDiceLoss) | DC_and_BCE_loss (region-based)",
    ),
}
BASELINE = {"dice": "diceloss DiceLoss", "dice_ce": "diceloss DiceCELoss"}


# ----------------------------------------------------------------------------------------------
# child process


def _make_loss(impl: str, kind: str, device: str, spatial: tuple[int, ...] = ()):
    """A function (x, y) -> loss, or a string saying why the implementation does not apply."""
    binary = kind == "binary"
    if impl.startswith("diceloss"):
        import diceloss

        mode = "binary" if binary else "multiclass"
        backend = "auto"
        if "(reference)" in impl:
            backend = "reference"
        elif "(PyTorch fallback)" in impl:
            backend = "fused"  # auto would take the reference on small inputs without the kernel
        elif "(triton)" in impl:
            if device != "cuda":
                return "n/a: Triton runs CUDA tensors"
            backend = "triton"
        cls = diceloss.DiceCELoss if "DiceCELoss" in impl else diceloss.DiceLoss
        return cls(mode=mode, backend=backend)
    if impl.startswith("MONAI"):
        from monai.losses import DiceCELoss, DiceLoss

        cls = DiceCELoss if "DiceCE" in impl else DiceLoss
        loss = cls(sigmoid=True) if binary else cls(softmax=True, to_onehot_y=True)
        return (lambda x, y: loss(x, y)) if binary else (lambda x, y: loss(x, y[:, None]))
    if impl.startswith("nnU-Net"):
        import torch
        from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
        from nnunetv2.utilities.helpers import softmax_helper_dim1

        if "DC_and" in impl:
            if binary:
                loss = DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                                       dice_class=MemoryEfficientSoftDiceLoss)
                return lambda x, y: loss(x, y)
            loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                  dice_class=MemoryEfficientSoftDiceLoss)
            return lambda x, y: loss(x, y[:, None])
        if binary:
            loss = MemoryEfficientSoftDiceLoss(torch.sigmoid, batch_dice=True, do_bg=True, smooth=1e-5, ddp=False)
            return lambda x, y: loss(x, y)
        loss = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5,
                                           ddp=False)
        return lambda x, y: loss(x, y[:, None])
    if impl.startswith("kornia"):
        if binary:
            return "n/a: one channel gives a constant loss (softmax over C=1)"
        if len(spatial) != 2:
            return "n/a: dice_loss accepts only (B, C, H, W)"
        from kornia.losses import dice_loss

        return lambda x, y: dice_loss(x, y)
    raise ValueError(impl)


def _peak_extra_bytes(fn, device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _worker(spec: dict) -> dict:
    import gc
    import time

    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    B, C, spatial, kind = WORKLOADS[spec["workload"]]
    out = {"impl": spec["impl"], "workload": spec["workload"]}
    try:
        fn = _make_loss(spec["impl"], kind, device, spatial)
    except ImportError as err:
        out["skipped"] = f"n/a: not installed ({err.name})"
        return out
    if isinstance(fn, str):
        out["skipped"] = fn
        return out
    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn((B, C, *spatial), generator=g)).to(device).requires_grad_()
    if kind == "binary":
        y = torch.randint(0, 2, (B, 1, *spatial), generator=g).float().to(device)
    else:
        y = torch.randint(0, C, (B, *spatial), generator=g).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        loss = fn(x, y)
        loss.backward()

    for _ in range(spec["warmup"]):
        x.grad = None
        step()
    times = []
    budget = spec["min_seconds"]
    # wall time, or the CPU time of the process (all its threads): with one thread, the latter leaves out the
    # time the process waits for a core on a machine that others share
    clock = time.process_time if spec.get("clock") == "process" else time.perf_counter
    while len(times) < spec["min_reps"] or (sum(times) < budget and len(times) < spec["max_reps"]):
        x.grad = None
        sync()
        t0 = clock()
        step()
        sync()
        times.append(clock() - t0)
    x.grad = None
    gc.collect()
    peak = _peak_extra_bytes(step, device)
    out.update(times_ms=[t * 1e3 for t in times], peak_bytes=peak, logits_bytes=x.numel() * x.element_size())
    if spec["impl"].startswith("diceloss"):
        from diceloss.backends import available

        out["backend_status"] = available()["fused"]
    return out


def _bandwidth_worker(spec: dict) -> dict:
    import time

    import torch

    torch.set_num_threads(spec["threads"])
    n = (256 << 20) // 4
    src = torch.randn(n, device=spec["device"])
    dst = torch.empty_like(src)
    times = []
    for _ in range(7):
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"copy_GBps": 2 * n * 4 / statistics.median(times[1:]) / 1e9}


# ----------------------------------------------------------------------------------------------
# parent


def _run_child(spec: dict, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=spec.get("timeout", 900))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"impl": spec.get("impl"), "workload": spec.get("workload"), "skipped": f"failed: {tail[0][:200]}"}


# torch's own kernels at the level a CPU of the kernel's level would give them (ATen's DispatchStub levels)
ATEN_CAPABILITY = {"avx512": "avx512", "avx2": "avx2", "baseline": "default"}


def _env(threads: int, no_cpp: bool, isa: str | None = None, peer_isa: str = "same") -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(threads)  # numpy's pool: its idle threads would count in --clock process
    if no_cpp:
        env["DICELOSS_NO_CPP"] = "1"
    else:
        env.pop("DICELOSS_NO_CPP", None)
    env.pop("DICELOSS_CPU_ISA", None)
    if isa:
        env["DICELOSS_CPU_ISA"] = isa
        if peer_isa == "same" and isa in ATEN_CAPABILITY:
            env["ATEN_CPU_CAPABILITY"] = ATEN_CAPABILITY[isa]
    return env


def _kernel_levels(threads: int) -> dict:
    """The prebuilt kernel's levels as a child process sees them: {"levels": [(name, runs here, instructions,
    float lanes)], "status": ...}; no levels without a kernel."""
    code = (
        "import json\n"
        "from diceloss.stats import cpu\n"
        "k = cpu.load()\n"
        "levels = [(lv.name, lv.runs_here, lv.instructions, lv.float_lanes) for lv in k.levels()] if k else []\n"
        "print(json.dumps({'levels': levels, 'status': cpu.status()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(threads, False))
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"levels": [], "status": out.stderr.strip()[-300:]}


def _cpu_isa_flags() -> str:
    """Which vector extensions the CPU reports (for the tables' heading)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
                        return "AVX-512 and AVX2"
                    return "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    except OSError:
        pass
    return platform.machine()


def _versions() -> dict:
    code = (
        "import json, platform, torch\n"
        "v = {'python': platform.python_version(), 'torch': torch.__version__}\n"
        "for m in ('diceloss', 'monai', 'kornia', 'nnunetv2'):\n"
        "    try:\n"
        "        from importlib.metadata import version; v[m] = version(m)\n"
        "    except Exception: v[m] = 'not installed'\n"
        "print(json.dumps(v))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip().splitlines()
    return json.loads(out[-1]) if out else {}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """The CPU model, its core count, whether it has AVX-512, the OS: the line every benchmark table names."""
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = "avx512f" in f.read()
    except OSError:
        avx512 = False
    return (f"{_cpu_name()}, {os.cpu_count()} CPUs, AVX-512 {'yes' if avx512 else 'no'}, "
            f"{platform.system()} {platform.machine()}")


def _bound_bytes(workload: str) -> int:
    B, C, spatial, kind = WORKLOADS[workload]
    N = 1
    for s in spatial:
        N *= s
    if kind == "binary":  # float32 targets (B, 1, N): read twice, like the logits
        return 12 * B * C * N + 8 * B * N
    return 12 * B * C * N + 16 * B * N


def summarise(results: list[dict], bandwidth: float) -> list[dict]:
    rows = []
    by_key = {}
    for r in results:
        by_key.setdefault((r["workload"], r["impl"]), []).append(r)
    for (workload, impl), rs in by_key.items():
        group = IMPLS[impl][0]
        times = [t for r in rs for t in r.get("times_ms", [])]
        row = {"workload": workload, "impl": impl, "group": group}
        if not times:
            row["note"] = rs[0].get("skipped", "no data")
            rows.append(row)
            continue
        peaks = [r["peak_bytes"] / r["logits_bytes"] for r in rs]
        row.update(
            median_ms=statistics.median(times),
            min_ms=min(times),
            max_ms=max(times),
            calls=len(times),
            peak_x_logits=statistics.median(peaks),
        )
        rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["workload"] == row["workload"] and r["impl"] == BASELINE[row["group"]]),
                    None)
        if base and "median_ms" in base and "median_ms" in row:
            row["ratio_to_diceloss"] = row["median_ms"] / base["median_ms"]
            row["ratio_of_min"] = row["min_ms"] / base["min_ms"]
        if row["impl"] in BASELINE.values() and "median_ms" in row and bandwidth:
            bound_ms = _bound_bytes(row["workload"]) / (bandwidth * 1e9) * 1e3
            row["bound_ms"] = bound_ms
            row["fraction_of_bound"] = bound_ms / row["median_ms"]
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = []
    if meta.get("isa"):
        lines += [f"### Kernel level {meta['isa']} ({meta.get('isa_instructions', '')}), on {meta['machine']}", ""]
    lines += [
        f"Run {meta['date']} on {meta['machine']}, {meta['threads']} threads, device {meta['device']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f"; copy bandwidth {meta['copy_GBps']:.1f} GB/s; {meta['rounds']} round(s)"
        + ("; times are CPU time of the process (--clock process)" if meta.get("clock") == "process" else "")
        + (f"; kernel level {meta['isa']} (DICELOSS_CPU_ISA), torch's kernels at {meta['aten_capability']} "
           "(ATEN_CPU_CAPABILITY)" if meta.get("isa") else "")
        + ".",
        "",
    ]
    for workload in [w for w in WORKLOADS if any(r["workload"] == w for r in rows)]:
        B, C, spatial, kind = WORKLOADS[workload]
        lines.append(f"**{workload}** {kind}, B={B}, C={C}, {'x'.join(map(str, spatial))} "
                     f"(logits {B * C * _numel(spatial) * 4 / 2**20:.1f} MiB)")
        lines.append("")
        lines.append("| implementation | median ms (min-max) | x diceloss time (median) | x diceloss time (min) | "
                     "peak extra x logits | fraction of bound |")
        lines.append("|---|---|---|---|---|---|")
        for row in [r for r in rows if r["workload"] == workload]:
            if "median_ms" not in row:
                lines.append(f"| {row['impl']} | {row['note']} | | | | |")
                continue
            frac = (f"{row['fraction_of_bound']:.0%} of median, {row['bound_ms'] / row['min_ms']:.0%} of min "
                    f"(bound {row['bound_ms']:.2f} ms)") if "fraction_of_bound" in row else ""
            ratio = f"{row['ratio_to_diceloss']:.2f}" if "ratio_to_diceloss" in row else ""
            ratio_min = f"{row['ratio_of_min']:.2f}" if "ratio_of_min" in row else ""
            lines.append(f"| {row['impl']} | {row['median_ms']:.2f} ({row['min_ms']:.2f}-{row['max_ms']:.1f}) | "
                         f"{ratio} | {ratio_min} | {row['peak_x_logits']:.2f} | {frac} |")
        lines.append("")
    return "\n".join(lines)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def chart(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (key, label, log) in zip(axes, [("median_ms", "forward + backward, ms (log)", True),
                                           ("peak_x_logits", "peak extra memory, x logits", False)]):
        impls = [i for i in IMPLS if any(r["impl"] == i and key in r for r in rows)]
        width = 0.8 / max(1, len(impls))
        for k, impl in enumerate(impls):
            vals = [next((r[key] for r in rows if r["workload"] == w and r["impl"] == impl and key in r), 0)
                    for w in workloads]
            ax.bar([i + k * width for i in range(len(workloads))], vals, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--impls", default="", help="comma-separated implementation names (exact) or substrings")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 warm-up, 3 timed calls")
    parser.add_argument("--isa", default="all",
                        help="kernel levels to run, comma-separated (avx512, avx2, baseline), 'all' (default: each "
                             "level this CPU runs) or 'none' (no level forced: the widest, one table)")
    parser.add_argument("--peer-isa", default="same", choices=("same", "native"),
                        help="torch's own kernels (the peers') at the kernel's level (same, default) or at the "
                             "widest (native)")
    parser.add_argument("--clock", default="wall", choices=("wall", "process"),
                        help="time per call: wall clock (default), or the process's CPU time (with --threads 1: "
                             "leaves out waiting for a core on a shared machine)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--summarise", default=None, metavar="JSON",
                        help="re-render the tables, CSV and chart of an earlier run's results JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.summarise is not None:
        saved = json.loads(Path(args.summarise).read_text())
        write_outputs(saved["raw"], saved["meta"], Path(args.out), saved["meta"]["device"])
        return 0

    if args.child is not None:
        spec = json.loads(args.child)
        result = _bandwidth_worker(spec) if spec.get("bandwidth") else _worker(spec)
        print(json.dumps(result))
        return 0

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; expected some of {list(WORKLOADS)}")
    # an entry that names an implementation exactly selects that one only; any other is a substring
    wanted = [s.strip() for s in args.impls.split(",") if s.strip()]
    impls = [i for i in IMPLS if not wanted or any(s == i or (s not in IMPLS and s in i) for s in wanted)]
    if args.device != "cuda":
        impls = [i for i in impls if "(triton)" not in i]
    if args.clock == "process" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock process measures the CPU time of one thread: use it with --threads 1 on the CPU")
    base = {"threads": args.threads, "device": args.device, "clock": args.clock}
    reps = dict(warmup=2, min_reps=3, max_reps=3, min_seconds=0.0) if args.quick else dict(
        warmup=3, min_reps=5, max_reps=40, min_seconds=1.5)

    # load (or build) the compiled kernel once, before any timed process, and list its levels
    kernel = _kernel_levels(args.threads)
    print(kernel["status"], flush=True)
    levels = {name: (runs, instructions) for name, runs, instructions, _ in kernel["levels"]}
    if args.device != "cpu" or args.isa == "none" or not levels:
        isas = [None]
    elif args.isa == "all":
        isas = [name for name, (runs, _) in levels.items() if runs]
    else:
        isas = [s.strip() for s in args.isa.split(",") if s.strip()]
        bad = [s for s in isas if s not in levels or not levels[s][0]]
        if bad:
            parser.error(f"--isa {bad}: this CPU runs the levels {[n for n, (r, _) in levels.items() if r]}")
    bandwidth = _run_child(dict(base, bandwidth=True), _env(args.threads, False)).get("copy_GBps", 0.0)
    cases = [(w, i) for w in workloads for i in impls]
    machine = f"{_cpu_name()} ({_cpu_isa_flags()}), {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    versions = _versions()
    tables = []
    for k, isa in enumerate(isas):
        results = []
        for rnd in range(args.rounds):
            order = cases if rnd % 2 == 0 else list(reversed(cases))
            for w, i in order:
                spec = dict(base, workload=w, impl=i, **reps)
                r = _run_child(spec, _env(args.threads, "fallback" in i, isa, args.peer_isa))
                results.append(r)
                t = f"{statistics.median(r['times_ms']):.2f} ms" if r.get("times_ms") else r.get("skipped")
                print(f"[{isa or 'native'}, round {rnd + 1}] {w} {i}: {t}", flush=True)

        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine,
            "threads": args.threads,
            "device": args.device,
            "clock": args.clock,
            "rounds": args.rounds,
            "copy_GBps": bandwidth,
            "versions": versions,
            "implementations": {i: IMPLS[i][1] for i in impls},
        }
        if isa:
            meta.update(isa=isa, isa_instructions=levels[isa][1],
                        aten_capability=ATEN_CAPABILITY.get(isa, "native") if args.peer_isa == "same" else "native")
        tables.append(write_outputs(results, meta, Path(args.out), args.device, isa if len(isas) > 1 else None,
                                    primary=k == 0))
    if len(tables) > 1:
        (Path(args.out) / "results_levels.md").write_text("\n\n".join(tables) + "\n")
    return 0


def write_outputs(results: list[dict], meta: dict, out: Path, device: str, tag: str | None = None,
                  primary: bool = True) -> str:
    """Write the JSON, CSV, chart and Markdown of one run (``results[_<tag>].*``; the primary one also as
    ``results.*``); returns the Markdown."""
    rows = summarise(results, meta["copy_GBps"])
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta)
    for suffix in ([""] if tag is None else ([f"_{tag}", ""] if primary else [f"_{tag}"])):
        _write_files(rows, results, meta, out, suffix + ("" if device == "cpu" else f"_{device}"), table)
    print()
    print(table)
    return table


def _write_files(rows: list[dict], results: list[dict], meta: dict, out: Path, suffix: str, table: str) -> None:
    (out / f"results{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows, "raw": results}, indent=1))
    keys = ["workload", "impl", "group", "median_ms", "min_ms", "max_ms", "calls", "ratio_to_diceloss",
            "ratio_of_min", "peak_x_logits", "bound_ms", "fraction_of_bound", "note"]
    with open(out / f"results{suffix}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    chart(rows, out / f"results{suffix}.png")
    (out / f"results{suffix}.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
