"""``diceloss demo``: train a small U-Net on a class-imbalanced segmentation set with several losses.

The pieces: :mod:`.data` (generated 2D/3D sets, a folder loader), :mod:`.model` (a small U-Net),
:mod:`.train` (the training loop, one process or ``torchrun``), :mod:`.report` (table and figure).
:func:`run_demo` runs the whole thing; the command line (``diceloss demo --help``) fills its
:class:`DemoConfig`.

Example:
    >>> from diceloss.demo import DemoConfig, run_demo
    >>> cfg = DemoConfig(size=32, n_train=8, n_val=4, steps=2, batch_size=2, width=4, depth=2,
    ...                  losses=("dice",), out=None, progress=False)
    >>> summary = run_demo(cfg, log=lambda *a: None)
    >>> summary["runs"][0].title
    'DiceLoss'
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..stats import cpu
from .data import SegmentationSet, load_folder, make_synthetic
from .model import UNet
from .report import check_tiny, format_table, save_figure, tiny_class, write_json
from .train import (
    DemoConfig,
    RunResult,
    World,
    default_threads,
    loss_key,
    pick_device,
    setup_world,
    train_one,
)


def build_data(cfg: DemoConfig, multiple: int) -> SegmentationSet:
    if cfg.data:
        return load_folder(cfg.data, seed=cfg.seed, multiple=multiple)
    return make_synthetic(cfg.n_train, cfg.n_val, size=cfg.size, dims=cfg.dims, seed=cfg.seed)


def _skip_first_build(log) -> bool:
    """Keep the fused backend off its C++ kernel when that is not compiled yet (it would take a minute or two
    of a demo that lasts two); its pure-PyTorch path gives the same numbers up to rounding. True if it did."""
    if cpu.enabled() and not cpu.is_built():
        cpu.set_enabled(False)
        log("note: the fused backend's C++ kernel is not compiled yet; the demo uses its PyTorch path")
        return True
    return False


def _can_draw(log) -> bool:
    """Whether matplotlib imports. If not, one line says how to get the figure: the demo runs on without it
    (the figure is the last step; training first and failing to draw at the end would waste the run)."""
    try:
        import matplotlib  # noqa: F401
    except Exception as err:  # not installed, or installed but broken (an ABI mismatch, a bad backend)
        why = "is not installed" if isinstance(err, ImportError) else f"does not import ({type(err).__name__}: {err})"
        log(f"note: the figure demo.png needs matplotlib, which {why}: pip install 'diceloss[demo]' "
            "(or --no-figure); the demo runs without it")
        return False
    return True


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Train one U-Net per loss of ``cfg.losses``; print the table; write figure, table, JSON to ``cfg.out``.

    Returns ``{"runs": [RunResult, ...], "table": str, "check": str, "ok": bool, "tiny_class": int, ...}``
    on every rank (the files are written by rank 0).
    """
    keys = [loss_key(k) for k in cfg.losses]
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
    skipped_build = _skip_first_build(log)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or default_threads())
    world = setup_world(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    try:
        device = pick_device(cfg.device, world)
        figure = bool(cfg.figure and cfg.out) and world.is_main and _can_draw(log)
        if world.size > cfg.batch_size:
            raise ValueError(
                f"{world.size} processes need a global batch of at least {world.size}, got {cfg.batch_size}"
            )
        data = build_data(cfg, 2 ** (cfg.depth - 1))
        shares = data.class_shares()
        tiny = tiny_class(shares)
        if world.is_main:
            log(
                f"data: {data.source}; train {tuple(data.train_images.shape)}, "
                f"val {tuple(data.val_images.shape)}"
            )
            log("class shares: " + ", ".join(f"{n} {100 * s:.2f}%" for n, s in zip(data.class_names, shares)))
            log(
                f"device: {device}{' x ' + str(world.size) + ' processes (DDP)' if world.size > 1 else ''}; "
                f"{cfg.steps} steps of {cfg.batch_size} images per run; amp={cfg.amp}"
            )
        results: list[RunResult] = []
        predictions = {}
        n_show = min(3, data.val_images.shape[0])
        show = _pick_examples(data, tiny, n_show)
        for key in keys:
            result, model = train_one(key, data, cfg, world, device, log=log)
            results.append(result)
            if world.is_main:
                with torch.no_grad():
                    out = model(data.val_images[show].to(device))
                predictions[key] = (out[0] if isinstance(out, list) else out).argmax(1).cpu()
                names = data.class_names[1:]
                per_class = ", ".join(f"{n} {d:.3f}" for n, d in zip(names, result.dice_mean[1:]))
                log(f"{result.title}: {result.seconds:.1f} s; validation Dice {per_class}")
        table = format_table(results, data.class_names)
        ok, check = check_tiny(results, tiny, data.class_names[tiny], cfg.target_dice)
        summary = dict(
            runs=results,
            table=table,
            check=check,
            ok=ok,
            tiny_class=tiny,
            class_names=data.class_names,
            world_size=world.size,
        )
        if world.is_main:
            log("")
            log("validation Dice per class (mean ± std over the validation images):")
            log(table)
            if check:
                log(check)
            if cfg.out:
                out = Path(cfg.out)
                out.mkdir(parents=True, exist_ok=True)
                meta = dict(
                    source=data.source,
                    class_names=list(data.class_names),
                    class_shares=shares,
                    tiny_class=tiny,
                    world_size=world.size,
                    device=str(device),
                    amp=cfg.amp,
                    config={k: v for k, v in vars(cfg).items()},
                    torch=torch.__version__,
                    machine=platform.machine(),
                    time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                )
                write_json(out / "results.json", results, json.loads(json.dumps(meta, default=repr)))
                (out / "table.txt").write_text(table + "\n" + (check + "\n" if check else ""))
                files = [out / "results.json", out / "table.txt"]
                if figure:
                    try:
                        save_figure(
                            out / "demo.png",
                            results,
                            predictions,
                            data.val_images[show],
                            data.val_labels[show],
                            data.class_names,
                            tiny,
                        )
                        files.append(out / "demo.png")
                    except Exception as err:  # never lose a finished run to the figure: table and JSON are written
                        log(f"note: could not draw {out / 'demo.png'} ({type(err).__name__}: {err})")
                log("wrote " + ", ".join(str(f) for f in files))
        return summary
    finally:
        torch.set_num_threads(threads_before)
        if skipped_build:
            cpu.set_enabled(True)
        if world.initialised_here:
            # every rank reaches the teardown together: a rank that closes its gloo connections while the
            # other is still writing its results can make the other's gloo threads abort the process at exit
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()


def _pick_examples(data: SegmentationSet, tiny: int, n: int) -> torch.Tensor:
    """Validation images to show: those with the most of the tiny class first (so it can be seen)."""
    counts = (data.val_labels == tiny).reshape(data.val_labels.shape[0], -1).sum(1)
    return torch.argsort(counts, descending=True, stable=True)[:n]


__all__ = ["DemoConfig", "run_demo", "make_synthetic", "load_folder", "UNet", "SegmentationSet", "World"]
