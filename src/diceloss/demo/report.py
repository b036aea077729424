"""The demo's outputs: the table of validation Dice, ``results.json`` and the PNG figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from .train import RunResult


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def format_table(results: list[RunResult], class_names: tuple[str, ...]) -> str:
    """Validation Dice per class (mean ± standard deviation over the validation images) and time per run."""
    names = list(class_names)
    header = ["loss", *names, "mean fg", "time"]
    rows = []
    for r in results:
        fg = [m for m in r.dice_mean[1:] if not math.isnan(m)]
        fg_mean = sum(fg) / len(fg) if fg else math.nan
        rows.append(
            [
                r.title,
                *(_cell(m, s) for m, s in zip(r.dice_mean, r.dice_std)),
                "n/a" if math.isnan(fg_mean) else f"{fg_mean:.3f}",
                f"{r.seconds:.1f} s",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def tiny_class(shares: list[float]) -> int:
    """The rarest foreground class of the training set."""
    fg = [(s, c) for c, s in enumerate(shares) if c > 0 and s > 0]
    return min(fg)[1] if fg else 1


def check_tiny(results: list[RunResult], cls: int, name: str, target: float) -> tuple[bool, str]:
    """Whether every Dice-based run reached ``target`` Dice on the tiny class, and a line saying so."""
    dice_runs = [r for r in results if r.key != "ce"]
    if not dice_runs:
        return True, ""
    parts = [f"{r.title} {r.dice_mean[cls]:.3f}" for r in dice_runs]
    ok = all(r.dice_mean[cls] >= target for r in dice_runs)
    ce = [r for r in results if r.key == "ce"]
    ce_part = f" (CE: {ce[0].dice_mean[cls]:.3f})" if ce else ""
    verdict = "OK" if ok else "NOT REACHED"
    return ok, (
        f"tiny class '{name}' ({cls}): validation Dice {', '.join(parts)}{ce_part}; "
        f"target >= {target:.2f} for the Dice-based losses: {verdict}"
    )


def write_json(path: Path, results: list[RunResult], meta: dict) -> None:
    runs = [
        dict(
            loss=r.key,
            title=r.title,
            options={k: _jsonable(v) for k, v in r.options.items()},
            seconds=r.seconds,
            dice_mean=r.dice_mean,
            dice_std=r.dice_std,
            loss_history=r.loss_history,
            val_steps=r.val_steps,
            val_dice=r.val_dice,
            components=r.components,
        )
        for r in results
    ]
    path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, allow_nan=True))


def _jsonable(v):
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)


def _middle_slice(t: Tensor) -> Tensor:
    """2D view of an image (H, W) or volume (D, H, W): the middle slice."""
    return t[t.shape[0] // 2] if t.ndim == 3 else t


def save_figure(
    path: Path,
    results: list[RunResult],
    predictions: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    class_names: tuple[str, ...],
    tiny: int,
) -> None:
    """Training curves (loss, validation Dice of the tiny class) and predictions beside the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    C = len(class_names)
    cmap = ListedColormap(
        ["#1b1b1b", "#3b7dd8", "#e0a030", "#e8322b", "#5cb85c", "#9b59b6", "#17becf", "#bcbd22"][: max(C, 2)]
    )
    n_show = images.shape[0]
    ncols = max(3, 2 + len(results))
    fig = plt.figure(figsize=(2.6 * ncols, 2.6 * (1 + n_show) + 0.6), constrained_layout=True)
    grid = fig.add_gridspec(1 + n_show, ncols)

    ax = fig.add_subplot(grid[0, : ncols // 2])
    for r in results:
        h = torch.tensor(r.loss_history)
        k = max(1, len(h) // 30)
        smooth = h.unfold(0, k, 1).mean(1) if len(h) >= k else h
        ax.plot(range(k, k + len(smooth)), smooth, label=r.title)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving mean)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, ncols // 2 :])
    for r in results:
        ax.plot(r.val_steps, [d[tiny] for d in r.val_dice], marker="o", ms=3, label=r.title)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation Dice, '{class_names[tiny]}'")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)

    for i in range(n_show):
        panels = [
            ("image", _middle_slice(images[i, 0]), "gray"),
            ("ground truth", _middle_slice(labels[i]), cmap),
        ]
        panels += [(r.title, _middle_slice(predictions[r.key][i]), cmap) for r in results]
        for j, (title, img, cm) in enumerate(panels):
            ax = fig.add_subplot(grid[1 + i, j])
            kw = {} if cm == "gray" else dict(vmin=0, vmax=max(C - 1, 1), interpolation="nearest")
            ax.imshow(img.float().numpy(), cmap=cm, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    fig.suptitle("diceloss demo: validation predictions of each loss beside the ground truth", fontsize=10)
    handles = [Patch(color=cmap(c), label=f"{c} {n}") for c, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(C, 8), fontsize=8, frameon=False)
    fig.savefig(path, dpi=90)
    plt.close(fig)
