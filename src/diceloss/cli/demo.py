"""``diceloss demo``: train a small U-Net with several losses and compare the validation Dice per class.

Also under ``torchrun --nproc_per_node N -m diceloss demo`` (DDP; gloo on the CPU, NCCL on GPUs), with
the same result as one process up to float rounding.
"""

from __future__ import annotations

import argparse
import ast
import sys

EPILOG = """\
losses (--loss, repeatable; default: ce dice gdl dicece):
  ce         torch cross-entropy (the baseline)
  dice       diceloss.DiceLoss              gdl        diceloss.GeneralizedDiceLoss
  dicece     diceloss.DiceCELoss            dicefocal  diceloss.DiceFocalLoss
  tversky    diceloss.TverskyLoss           jaccard    diceloss.JaccardLoss
  hausdorff  diceloss.hausdorff.DiceHausdorffDTLoss (Dice + CE + 0.01 x Hausdorff-DT; --loss-opt lambda_hd=...)
  cldice     diceloss.DiceClDiceLoss (0.5 Dice + 0.5 soft clDice; --loss-opt iterations=5)
  blob       diceloss.BlobLoss (Dice + Dice per target component; --loss-opt lambda_blob=2)
  unified_focal  diceloss.UnifiedFocalLoss (asymmetric unified focal; --loss-opt delta=0.6 gamma=0.5)
  wasserstein    diceloss.GeneralizedWassersteinDiceLoss (--loss-opt "dist_matrix=[[0,1],[1,0]]")
  lovasz     diceloss.LovaszLoss (Lovász-softmax over the batch; --loss-opt per_image=true classes=all)
  skeleton_recall  diceloss.DiceCESkeletonRecallLoss (Dice + CE + Skeleton Recall; --loss-opt lambda_skeleton=2)
  boundary   GeneralizedDiceLoss + 0.01 x diceloss.BoundaryLoss (--loss-opt lambda_boundary=0.1 spacing=[1,2])
  calibration  DiceCELoss + 0.3 x diceloss.CalibrationLoss (--loss-opt soft=true lambda_calibration=1)
The Dice-family losses get batch_dice=True unless --loss-opt says otherwise.

examples:
  diceloss demo                                   # 2D, the four default losses, 1-3 min on 2 CPU cores
  diceloss demo --3d                              # 3D volumes (32^3, batch 4, 150 steps)
  diceloss demo --loss dice --loss-opt squared=true --loss-opt include_background=false
  diceloss demo --loss tversky --loss-opt alpha=0.3 --loss-opt beta=0.7 --loss-opt exponent=0.75
  diceloss demo --data DIR                        # DIR/images/<name>.png|npy|npz|nii.gz, DIR/labels/<name>.*
  diceloss demo --device cuda --amp
  torchrun --nproc_per_node 2 -m diceloss demo    # DDP; same numbers as one process
"""


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` -> (key, value), the value read as a Python literal where it is one (numbers, lists),
    true/false/none in any case, else the string.

    Example:
        >>> parse_option("weight=1,2,5")
        ('weight', [1, 2, 5])
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"option name must be an identifier, got {key!r}")
    low = raw.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null"):
        return key, None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw
    if isinstance(value, tuple):
        value = list(value)
    return key, value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="train a small U-Net with several losses; compare the Dice per class",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--3d", dest="three_d", action="store_true", help="generated 3D volumes instead of 2D images"
    )
    g.add_argument("--size", type=int, default=None, help="side of the generated images (default 48; 3D: 32)")
    g.add_argument(
        "--train",
        type=int,
        default=None,
        dest="n_train",
        help="generated training images (default 192; 3D: 64)",
    )
    g.add_argument(
        "--val", type=int, default=None, dest="n_val", help="generated validation images (default 48; 3D: 16)"
    )
    g.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="train on DIR/images/<name>.{png,npy,npz,nii,nii.gz} with DIR/labels/<name>.* instead",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the data, the network and the batches (default 0)"
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--loss",
        action="append",
        default=None,
        metavar="NAME",
        help="a loss to train with (repeatable; default: ce dice gdl dicece)",
    )
    g.add_argument(
        "--loss-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=parse_option,
        help="an option for the loss constructor, e.g. include_background=false (repeatable)",
    )
    g.add_argument("--steps", type=int, default=None, help="training steps per loss (default 240; 3D: 150)")
    g.add_argument(
        "--batch-size", type=int, default=None, help="global batch, split over DDP ranks (default 8; 3D: 4)"
    )
    g.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate, poly decay (default 5e-3)")
    g.add_argument("--width", type=int, default=16, help="U-Net channels at the top level (default 16)")
    g.add_argument("--depth", type=int, default=3, help="U-Net levels (default 3)")
    g.add_argument(
        "--deep-supervision",
        action="store_true",
        help="train on every decoder level with diceloss.DeepSupervisionLoss",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:N]")
    g.add_argument(
        "--amp", action="store_true", help="automatic mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    g.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: OMP_NUM_THREADS or half the cores)"
    )
    g.add_argument("--val-every", type=int, default=20, help="steps between validations (default 20)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", default="runs/demo", help="folder for demo.png, table.txt, results.json (default runs/demo)"
    )
    g.add_argument("--no-figure", action="store_true", help="skip the PNG figure")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--target-dice",
        type=float,
        default=0.5,
        help="Dice the Dice-based losses must reach on the tiny class (default 0.5; exit 1 if not)",
    )
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    from diceloss.demo import DemoConfig

    three_d = args.three_d
    return DemoConfig(
        dims=3 if three_d else 2,
        size=args.size or (32 if three_d else 48),
        n_train=args.n_train or (64 if three_d else 192),
        n_val=args.n_val or (16 if three_d else 48),
        steps=args.steps or (150 if three_d else 240),
        batch_size=args.batch_size or (4 if three_d else 8),
        lr=args.lr,
        width=args.width,
        depth=args.depth,
        seed=args.seed,
        losses=tuple(args.loss) if args.loss else DemoConfig.losses,
        loss_options=dict(args.loss_opt),
        device=args.device,
        amp=args.amp,
        val_every=max(1, args.val_every),
        deep_supervision=args.deep_supervision,
        data=args.data,
        out=args.out,
        progress=not args.no_progress,
        figure=not args.no_figure,
        target_dice=args.target_dice,
        threads=args.threads,
    )


def run(args) -> int:
    from diceloss.demo import run_demo

    try:
        summary = run_demo(config_from_args(args))
    except ValueError as err:
        print(f"diceloss demo: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["ok"] else 1
