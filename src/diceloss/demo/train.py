"""The demo's training loop: one run per loss, on one process or under ``torchrun`` (DDP).

Several processes train the same network as one process does, up to float rounding:

* every rank builds the same data (generated from the seed) and the same initial network (seeded;
  DDP also broadcasts rank 0's parameters);
* the global batch of a step is the same in both cases; rank r takes its contiguous slice of it (the
  slices may differ in size by one when the batch does not divide evenly);
* the network uses GroupNorm, so a sample's output does not depend on the rest of the batch;
* the losses see the whole global batch: batch Dice with ``distributed=True`` sums the statistics
  over the ranks before the Dice (every rank computes the loss of the union of the slices), and the
  cross-entropy baseline divides the all-reduced sum by the global count. DDP averages the parameter
  gradients over the ranks, and the differentiable all-reduce scales each rank's gradient so that
  the average is the single-process gradient.

Validation Dice comes from :class:`diceloss.metrics.DiceMetric`, whose ``compute()`` sums its state over
the ranks.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .. import losses as _losses
from ..blob import BlobLoss
from ..boundary import BoundaryLoss
from ..calibration_loss import CalibrationLoss
from ..cldice import DiceClDiceLoss
from ..cli.progress import progress
from ..distributed import all_reduce_sum
from ..hausdorff import DiceHausdorffDTLoss
from ..lovasz import LovaszLoss
from ..metrics import DiceMetric, dice_score
from ..skeleton_recall import DiceCESkeletonRecallLoss
from ..unified_focal import UnifiedFocalLoss
from ..wasserstein import GeneralizedWassersteinDiceLoss
from .data import SegmentationSet
from .model import UNet


class _WithRegion(nn.Module):
    """A region loss plus ``weight`` x a term that is not trained alone (the boundary and calibration losses):
    the options the two share go to both, the others to the one that takes them."""

    shared = ("mode", "from_logits", "include_background", "ignore_index", "batch_dice", "backend", "distributed")

    def __init__(self, region: type, term: type, weight: float, **options) -> None:
        super().__init__()
        term_only = set(inspect.signature(term).parameters) - set(inspect.signature(region).parameters)
        self.region = region(**{k: v for k, v in options.items() if k not in term_only})
        self.term = term(**{k: v for k, v in options.items() if k in term_only or k in self.shared})
        self.weight = float(weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return self.region(input, target) + self.weight * self.term(input, target)


class GDLBoundary(_WithRegion):
    """Generalized Dice + 0.01 x boundary loss: the authors' first-epoch weights (they move 0.01 per epoch onto the
    boundary term; docs/losses/boundary.md); the distance maps are computed from the target every step."""

    def __init__(self, lambda_boundary: float = 0.01, **options) -> None:
        super().__init__(_losses.GeneralizedDiceLoss, BoundaryLoss, lambda_boundary, **options)


class DiceCECalibration(_WithRegion):
    """Dice + CE + 0.3 x the L1 calibration loss (MONAI's tutorial weights; the authors use 1 : 1 : 1)."""

    def __init__(self, lambda_calibration: float = 0.3, **options) -> None:
        super().__init__(_losses.DiceCELoss, CalibrationLoss, lambda_calibration, **options)


# name -> (display name, class or None for the cross-entropy baseline)
LOSSES: dict[str, tuple[str, type | None]] = {
    "ce": ("CE", None),
    "dice": ("DiceLoss", _losses.DiceLoss),
    "gdl": ("GeneralizedDiceLoss", _losses.GeneralizedDiceLoss),
    "dicece": ("DiceCELoss", _losses.DiceCELoss),
    "dicefocal": ("DiceFocalLoss", _losses.DiceFocalLoss),
    "tversky": ("TverskyLoss", _losses.TverskyLoss),
    "jaccard": ("JaccardLoss", _losses.JaccardLoss),
    # Dice + CE + a small Hausdorff distance-transform term: how HD-DT is trained (not alone)
    "hausdorff": ("DiceHausdorffDTLoss", DiceHausdorffDTLoss),
    # clDice is trained with a volume term: Dice + clDice (the authors' loss, 0.5 each)
    "cldice": ("DiceClDiceLoss", DiceClDiceLoss),
    # Dice + a Dice per connected component of the target (blobs computed on the CPU every step)
    "blob": ("BlobLoss", BlobLoss),
    "unified_focal": ("UnifiedFocalLoss", UnifiedFocalLoss),
    # every pair of distinct classes at distance 1 unless --loss-opt dist_matrix=[[...]] says otherwise
    "wasserstein": ("GeneralizedWassersteinDiceLoss", GeneralizedWassersteinDiceLoss),
    # Lovász-softmax over the batch (per_image=False, classes="present": the authors' defaults)
    "lovasz": ("LovaszLoss", LovaszLoss),
    # Dice + CE + Skeleton Recall, the authors' 1 : 1 : 1 (tubed skeletons computed on the CPU every step)
    "skeleton_recall": ("DiceCESkeletonRecallLoss", DiceCESkeletonRecallLoss),
    # the boundary and calibration losses are trained beside a region loss, not alone
    "boundary": ("GDL + 0.01 BoundaryLoss", GDLBoundary),
    "calibration": ("DiceCE + 0.3 CalibrationLoss", DiceCECalibration),
}
ALIASES = {
    "cross_entropy": "ce",
    "crossentropy": "ce",
    "diceloss": "dice",
    "generalized_dice": "gdl",
    "generalizeddiceloss": "gdl",
    "dice_ce": "dicece",
    "dice_cldice": "cldice",
    "dicecldice": "cldice",
    "dicecldiceloss": "cldice",
    "diceceloss": "dicece",
    "dice_focal": "dicefocal",
    "dicefocalloss": "dicefocal",
    "tverskyloss": "tversky",
    "jaccardloss": "jaccard",
    "hd": "hausdorff",
    "hausdorff_dt": "hausdorff",
    "dicehausdorffdtloss": "hausdorff",
    "blobloss": "blob",
    "unifiedfocal": "unified_focal",
    "unifiedfocalloss": "unified_focal",
    "gwdl": "wasserstein",
    "generalized_wasserstein_dice": "wasserstein",
    "generalizedwassersteindiceloss": "wasserstein",
    "lovaszloss": "lovasz",
    "lovasz_softmax": "lovasz",
}
DEFAULT_LOSSES = ("ce", "dice", "gdl", "dicece")
# batch Dice: nnU-Net's choice for small structures, and what makes training on several processes exact
DEFAULT_DICE_OPTIONS = {"batch_dice": True}


def loss_key(name: str) -> str:
    """The registry key of a loss name (case-insensitive, with aliases); ValueError for an unknown name."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return key


@dataclass
class DemoConfig:
    """Everything a demo run depends on; the command line fills it (``diceloss demo --help``)."""

    dims: int = 2
    size: int = 48
    n_train: int = 192
    n_val: int = 48
    steps: int = 240
    batch_size: int = 8
    lr: float = 5e-3
    width: int = 16
    depth: int = 3
    seed: int = 0
    losses: tuple[str, ...] = DEFAULT_LOSSES
    loss_options: dict = field(default_factory=dict)
    device: str = "auto"
    amp: bool = False
    val_every: int = 20
    deep_supervision: bool = False
    data: str | None = None
    out: str | None = "runs/demo"
    progress: bool = True
    figure: bool = True
    target_dice: float = 0.5
    threads: int | None = None


class CrossEntropy(nn.Module):
    """``torch.nn.functional.cross_entropy`` averaged over the global batch.

    With ``distributed=True`` the sum and the count are all-reduced (differentiably) before the
    division, so the value and, under DDP, the parameter gradients are those of one process that sees
    every rank's batch, also when the ranks hold different numbers of samples.
    """

    def __init__(
        self, weight=None, label_smoothing: float = 0.0, distributed: bool = False, process_group=None
    ) -> None:
        super().__init__()
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )
        self.label_smoothing = float(label_smoothing)
        self.distributed = distributed
        self.process_group = process_group

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(input.device)
        total = F.cross_entropy(
            input.float(), target, weight=w, label_smoothing=self.label_smoothing, reduction="sum"
        )
        count = torch.tensor(float(target.numel()), device=input.device) if w is None else w[target].sum()
        if self.distributed:
            total = all_reduce_sum(total, self.process_group)
            count = all_reduce_sum(count, self.process_group)
        return total / count


def build_loss(key: str, options: dict, *, distributed: bool) -> tuple[nn.Module, dict]:
    """The loss module of a registry key with the user's options (and the demo's defaults); returns it and
    the options it was built with."""
    title, cls = LOSSES[key]
    if cls is None:
        opts = dict(options)
        allowed = {"weight", "label_smoothing"}
        unknown = set(opts) - allowed
        if unknown:
            raise ValueError(f"CE takes the options {sorted(allowed)}; got {sorted(unknown)}")
        return CrossEntropy(**opts, distributed=distributed), opts
    # the batch Dice default goes to the losses that take batch_dice (LovaszLoss has per_image instead)
    params = inspect.signature(cls).parameters.values()
    takes_batch_dice = any(p.name == "batch_dice" or p.kind is p.VAR_KEYWORD for p in params)
    opts = {**DEFAULT_DICE_OPTIONS, **options} if takes_batch_dice else dict(options)
    if distributed and opts.get("batch_dice"):
        opts["distributed"] = True
    try:
        return cls(**opts), opts
    except TypeError as err:
        raise ValueError(f"{title} does not take these options {options}: {err}") from err


# ------------------------------------------------------------------------------------------------
# processes


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_world(device: str) -> World:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on GPUs)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "gloo" and os.environ.get("MASTER_ADDR", "127.0.0.1") in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: talk over the loopback interface
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)


def default_threads() -> int:
    """CPU threads for the demo: ``OMP_NUM_THREADS`` when set, else half the cores (at most 4).

    On a shared or small machine, threads that wait for a busy core spin and slow everyone down; one
    thread per two cores trains the demo's small network nearly as fast as all of them.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def pick_device(device: str, world: World) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but PyTorch sees no CUDA device; use --device cpu")
        if device == "cuda":
            device = f"cuda:{world.local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    elif device != "cpu":
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def shard_bounds(total: int, world: World) -> tuple[int, int]:
    """Rank's contiguous slice [start, stop) of ``total`` items; sizes differ by at most one."""
    base, extra = divmod(total, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (1 if world.rank < extra else 0)


def batch_schedule(n: int, batch_size: int, steps: int, seed: int) -> Tensor:
    """The global batch of every step: (steps, batch_size) indices into the train set, shuffled per epoch."""
    gen = torch.Generator().manual_seed(seed + 1)
    need = steps * batch_size
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])
    return order[:need].view(steps, batch_size)


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    world: World,
    device: torch.device,
    autocast: Callable,
    batch: int = 16,
) -> tuple[Tensor, Tensor]:
    """Validation Dice per class over this rank's shard, synced over the ranks: (mean (C,), std (C,)).

    Mean: :class:`DiceMetric` (the mean over images of the per-image Dice; an image where a class is
    absent from both prediction and truth does not count for that class). Spread: the standard
    deviation of the same per-image values.
    """
    start, stop = shard_bounds(images.shape[0], world)
    metric = DiceMetric(mode="multiclass", num_classes=num_classes)
    moments = torch.zeros(3, num_classes, dtype=torch.float64, device=device)  # count, sum, sum of squares
    for i in range(start, stop, batch):
        x = images[i : min(i + batch, stop)].to(device)
        y = labels[i : min(i + batch, stop)].to(device)
        with autocast():
            out = model(x)
        pred = (out[0] if isinstance(out, list) else out).argmax(1)
        metric.update(pred, y)
        d = dice_score(pred, y, mode="multiclass", num_classes=num_classes)
        ok = ~torch.isnan(d)
        d0 = torch.where(ok, d, torch.zeros_like(d))
        moments += torch.stack([ok.double().sum(0), d0.sum(0), (d0 * d0).sum(0)])
    if stop <= start:  # more ranks than images: contribute nothing, but join the collective of compute()
        metric._state = torch.zeros(4, num_classes, dtype=torch.float64, device=device)
    mean = metric.compute(reduction="none").cpu()
    if world.size > 1:
        dist.all_reduce(moments)
    n, s, s2 = moments.cpu()
    var = (s2 - s * s / n.clamp_min(1)) / (n - 1).clamp_min(1)
    return mean, var.clamp_min(0).sqrt()


# ------------------------------------------------------------------------------------------------
# one run


@dataclass
class RunResult:
    key: str
    title: str
    options: dict
    seconds: float
    dice_mean: list[float]
    dice_std: list[float]
    loss_history: list[float]
    val_steps: list[int]
    val_dice: list[list[float]]
    components: dict = field(default_factory=dict)


def _progress(steps: int, title: str, enabled: bool):
    # a tqdm bar on a terminal; redirected (a CI log, a batch job) or without tqdm, a line every few seconds
    return progress(steps, desc=f"{title:>20}", unit="step", file=sys.stderr, enabled=enabled)


def train_one(
    key: str, data: SegmentationSet, cfg: DemoConfig, world: World, device: torch.device, log=print
) -> tuple[RunResult, nn.Module]:
    """Train a fresh U-Net with one loss; returns the result and the trained network (unwrapped)."""
    from ..deep_supervision import DeepSupervisionLoss

    title = LOSSES[key][0]
    loss_fn, opts = build_loss(key, cfg.loss_options, distributed=world.size > 1)
    per_sample = LOSSES[key][1] is not None and not opts.get("batch_dice", False)
    if world.size > 1 and per_sample and cfg.batch_size % world.size:
        raise ValueError(
            f"{title} with batch_dice=False averages per-sample losses on each rank; for the result "
            f"of one process the batch ({cfg.batch_size}) must divide evenly over {world.size} ranks"
        )
    if cfg.deep_supervision:
        loss_fn = DeepSupervisionLoss(loss_fn)
    loss_fn = loss_fn.to(device)

    torch.manual_seed(cfg.seed)
    model = UNet(
        data.spatial_dims,
        data.in_channels,
        data.num_classes,
        width=cfg.width,
        depth=cfg.depth,
        deep_supervision=cfg.deep_supervision,
    ).to(device)
    net: nn.Module = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (1 - s / cfg.steps) ** 0.9
    )  # nnU-Net's poly decay
    use_amp = cfg.amp
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    schedule = batch_schedule(data.train_images.shape[0], cfg.batch_size, cfg.steps, cfg.seed)
    lo, hi = shard_bounds(cfg.batch_size, world)
    bar = _progress(cfg.steps, title, cfg.progress and world.is_main)
    history: list[float] = []
    val_steps: list[int] = []
    val_dice: list[list[float]] = []
    running = None
    comps: dict[str, float] = {}
    start_time = time.perf_counter()
    for step in range(cfg.steps):
        idx = schedule[step, lo:hi]
        x = data.train_images[idx].to(device, non_blocking=True)
        y = data.train_labels[idx].to(device, non_blocking=True)
        net.train()
        with autocast():
            out = net(x)
        loss = loss_fn(out, y)  # diceloss sums its statistics in float32 whatever the autocast dtype
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        value = float(loss.detach())
        history.append(value)
        running = value if running is None else 0.95 * running + 0.05 * value
        inner = loss_fn.loss if cfg.deep_supervision else loss_fn
        comps = {k: float(v) for k, v in getattr(inner, "components", {}).items()}
        bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.3f}" for k, v in comps.items()})
        bar.update(1)
        if (step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps:
            mean, _ = evaluate(
                model, data.val_images, data.val_labels, data.num_classes, world, device, autocast
            )
            val_steps.append(step + 1)
            val_dice.append(mean.tolist())
            bar.set_description(f"{title:>20} (val Dice {_fmt(mean[1:].nanmean())})")
    bar.close()
    mean, std = evaluate(model, data.val_images, data.val_labels, data.num_classes, world, device, autocast)
    seconds = time.perf_counter() - start_time
    shown = {k: v for k, v in opts.items() if k not in ("distributed",)}
    return RunResult(
        key, title, shown, seconds, mean.tolist(), std.tolist(), history, val_steps, val_dice, comps
    ), model


def _fmt(v) -> str:
    v = float(v)
    return "  n/a" if math.isnan(v) else f"{v:.3f}"
