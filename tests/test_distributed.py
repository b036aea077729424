"""Batch Dice across processes: 2 and 3 gloo ranks on the CPU against one process on the union of the batches.

One ``torch.multiprocessing.spawn`` per world size runs every case (spawning costs seconds, a case
milliseconds) and saves, per rank, the loss and the parameter gradients after ``backward`` through
``DistributedDataParallel``; the tests compare them with one process that sees the whole batch.
Everything is float64, so "equal" means to 1e-6 relative with room to spare (the differences are ~1e-15).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import diceloss
from diceloss.distributed import all_reduce_stats, all_reduce_sum
from diceloss.metrics import DiceMetric

C = 3
B = 6
SIZE = 6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, out_channels, 1)).double()


# name -> (loss factory taking the distributed options, data mode)
CASES = {
    "dice": (lambda d: diceloss.DiceLoss(batch_dice=True, **d), "multiclass"),
    "dice_options": (
        lambda d: diceloss.DiceLoss(
            batch_dice=True,
            **d,
            include_background=False,
            weight=[1.0, 2.0, 0.5],
            squared=True,
            log=True,
        ),
        "multiclass",
    ),
    "dice_absent_exclude": (
        lambda d: diceloss.DiceLoss(batch_dice=True, **d, absent="exclude"),
        "multiclass",
    ),
    "jaccard": (lambda d: diceloss.JaccardLoss(batch_dice=True, **d), "multiclass"),
    "tversky": (
        lambda d: diceloss.TverskyLoss(batch_dice=True, **d, alpha=0.3, beta=0.7, exponent=0.75),
        "multiclass",
    ),
    "gdl": (lambda d: diceloss.GeneralizedDiceLoss(batch_dice=True, **d), "multiclass"),
    "dice_ce": (
        lambda d: diceloss.DiceCELoss(batch_dice=True, **d, weight=[0.5, 1.0, 2.0], ignore_index=252),
        "multiclass-ignore",
    ),
    "dice_focal": (
        lambda d: diceloss.DiceFocalLoss(batch_dice=True, **d, include_background=False),
        "multiclass",
    ),
    "binary_dice_ce": (lambda d: diceloss.DiceCELoss("binary", batch_dice=True, **d), "binary"),
    "multilabel_dice": (
        lambda d: diceloss.DiceLoss("multilabel", batch_dice=True, **d),
        "multilabel",
    ),
    # the last rank's samples hold background only: its Dice statistics are all-zero for the foreground
    "empty_rank_dice_ce": (
        lambda d: diceloss.DiceCELoss(batch_dice=True, **d, include_background=False),
        "multiclass-empty-last",
    ),
    "empty_rank_gdl": (
        lambda d: diceloss.GeneralizedDiceLoss(batch_dice=True, **d, include_background=False),
        "multiclass-empty-last",
    ),
    # issue 13: the sums of the unified focal (focal term included), GWDL and blob (its blob term too) losses
    "unified_focal": (lambda d: diceloss.UnifiedFocalLoss(batch_dice=True, **d, ignore_index=252), "multiclass-ignore"),
    "wasserstein": (
        lambda d: diceloss.GeneralizedWassersteinDiceLoss(
            batch_dice=True, **d, weighting="GDL", dist_matrix=[[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
        ),
        "multiclass",
    ),
    "blob": (lambda d: diceloss.BlobLoss(batch_dice=True, **d, lambda_blob=2.0), "multiclass-empty-last"),
    # issue 13: Skeleton Recall's map sums (with Dice + CE), the boundary loss's sum and count, the bin sums
    "skeleton_recall": (lambda d: diceloss.DiceCESkeletonRecallLoss(batch_dice=True, **d), "multiclass"),
    "boundary": (
        lambda d: diceloss.BoundaryLoss(batch_dice=True, **d, spacing=(1.0, 2.0), ignore_index=252),
        "multiclass-ignore",
    ),
    "calibration": (lambda d: diceloss.CalibrationLoss(batch_dice=True, **d, soft=True), "multiclass"),
}


def _data(mode: str, splits: list[int]):
    g = torch.Generator().manual_seed(1)
    n = sum(splits)
    x = torch.randn(n, 2, SIZE, SIZE, generator=g, dtype=torch.float64)
    if mode == "binary":
        return x, (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.7).double(), 1
    if mode == "multilabel":
        return x, (torch.rand(n, C, SIZE, SIZE, generator=g) > 0.6).double(), C
    t = torch.randint(0, C, (n, SIZE, SIZE), generator=g)
    if mode == "multiclass-ignore":
        t[:, 0, :3] = 252  # positions the loss ignores (ignore_index=252)
    if mode == "multiclass-empty-last":
        t[n - splits[-1] :] = 0
    return x, t, C


def _bounds(splits: list[int], rank: int) -> tuple[int, int]:
    lo = sum(splits[:rank])
    return lo, lo + splits[rank]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """World of 3: the 2-rank cases run on the subgroup {0, 1} (rank 2 idles), the 3-rank ones on all."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        # every rank takes part in creating every group
        groups = {2: dist.new_group([0, 1]), 3: None}
        singles = [dist.new_group([r]) for r in range(world)]
        for w, pg in groups.items():
            if rank >= w:
                continue
            for split_name, splits in SPLITS[w].items():
                lo, hi = _bounds(splits, rank)
                for name, (factory, mode) in CASES.items():
                    x, t, out_ch = _data(mode, splits)
                    model = _model(out_ch)
                    ddp = nn.parallel.DistributedDataParallel(model, process_group=pg)
                    loss = factory(dict(distributed=True, process_group=pg))(ddp(x[lo:hi]), t[lo:hi])
                    loss.backward()
                    results[(w, split_name, name)] = dict(
                        loss=loss.detach(), grads=[p.grad.clone() for p in model.parameters()]
                    )
                # a process group of this rank alone: the loss of the local slice, as without distributed
                x, t, _ = _data("multiclass", splits)
                own = diceloss.DiceLoss(batch_dice=True, distributed=True, process_group=singles[rank])
                results[(w, split_name, "own_group")] = dict(loss=own(_model(C)(x[lo:hi]), t[lo:hi]).detach())
                # DiceMetric: each rank sees its slice; compute() sums the state over the ranks
                pred, truth = _labels(splits)
                for agg in ("sample", "global"):
                    m = DiceMetric(num_classes=C, aggregation=agg, process_group=pg)
                    m.update(pred[lo:hi], truth[lo:hi])
                    results[(w, split_name, f"metric_{agg}")] = dict(value=m.compute(reduction="none"))
        # all_reduce_sum: forward sums, backward hands every rank the sum of the upstream gradients
        v = torch.tensor([float(rank + 1), 2.0], dtype=torch.float64, requires_grad=True)
        s = all_reduce_sum(v)
        (s * torch.tensor([rank + 1.0, 1.0], dtype=torch.float64)).sum().backward()
        results["all_reduce_sum"] = dict(value=s.detach(), grad=v.grad.clone())
        try:
            stats = diceloss.compute_stats(torch.randn(2, C, 4), torch.randint(0, C, (2, 4)))
            all_reduce_stats(stats)
            results["unsummed_stats"] = "no error"
        except ValueError as err:
            results["unsummed_stats"] = str(err)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _labels(splits):
    g = torch.Generator().manual_seed(7)
    pred = torch.randint(0, C, (sum(splits), SIZE, SIZE), generator=g)
    truth = torch.randint(0, C, (sum(splits), SIZE, SIZE), generator=g)
    truth[:, :, :2] = 0
    return pred, truth


SPLITS = {
    2: {"equal": [3, 3], "unequal": [4, 1]},
    3: {"equal": [2, 2, 2], "unequal": [1, 3, 2]},
}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # the workers skip loading the fused backend's compiled CPU kernel (seconds per process): the
    # all-reduce sits between the statistics and the head, the same for every backend
    before = os.environ.get("DICELOSS_NO_CPP")
    os.environ["DICELOSS_NO_CPP"] = "1"
    try:
        mp.spawn(_worker, args=(3, _free_port(), str(out)), nprocs=3, join=True)
    finally:
        if before is None:
            del os.environ["DICELOSS_NO_CPP"]
        else:
            os.environ["DICELOSS_NO_CPP"] = before
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(3)]


def _single(name: str, splits: list[int]):
    factory, mode = CASES[name]
    x, t, out_ch = _data(mode, splits)
    model = _model(out_ch)
    loss = factory({})(model(x), t)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("split_name", ["equal", "unequal"])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_ddp_matches_one_process(ranks, world, split_name, name):
    splits = SPLITS[world][split_name]
    loss, grads = _single(name, splits)
    assert any(float(g.abs().max()) > 1e-4 for g in grads), "the case must have a gradient to compare"
    for rank, res in enumerate(ranks[:world]):
        got = res[(world, split_name, name)]
        # every rank computes the loss of the union of the batches
        torch.testing.assert_close(got["loss"], loss, rtol=1e-10, atol=1e-12, msg=f"rank {rank} loss")
        # after DDP's averaging, the parameter gradients are those of one process on the whole batch
        for g_ddp, g_one in zip(got["grads"], grads):
            torch.testing.assert_close(g_ddp, g_one, rtol=1e-6, atol=1e-10, msg=f"rank {rank} gradient")


def test_empty_rank_really_is_empty():
    for splits in (SPLITS[2]["unequal"], SPLITS[3]["equal"]):
        _, t, _ = _data("multiclass-empty-last", splits)
        assert int(t[sum(splits) - splits[-1] :].max()) == 0
        assert int(t[: sum(splits) - splits[-1]].max()) > 0


@pytest.mark.parametrize("world", [2, 3])
def test_own_process_group_gives_the_local_loss(ranks, world):
    for split_name, splits in SPLITS[world].items():
        x, t, _ = _data("multiclass", splits)
        for rank, res in enumerate(ranks[:world]):
            lo, hi = _bounds(splits, rank)
            local = diceloss.DiceLoss(batch_dice=True)(_model(C)(x[lo:hi]), t[lo:hi]).detach()
            got = res[(world, split_name, "own_group")]["loss"]
            torch.testing.assert_close(got, local, rtol=1e-12, atol=1e-12)
            assert not torch.allclose(local, _single("dice", splits)[0]), (
                "a slice's loss differs from the union's"
            )


@pytest.mark.parametrize("world", [2, 3])
def test_dice_metric_compute_syncs(ranks, world):
    for split_name, splits in SPLITS[world].items():
        pred, truth = _labels(splits)
        for agg in ("sample", "global"):
            m = DiceMetric(num_classes=C, aggregation=agg)
            m.update(pred, truth)
            want = m.compute(reduction="none")
            lo, hi = _bounds(splits, 0)
            local = DiceMetric(num_classes=C, aggregation=agg)
            local.update(pred[lo:hi], truth[lo:hi])
            assert not torch.allclose(local.compute(reduction="none"), want)
            for res in ranks[:world]:
                got = res[(world, split_name, f"metric_{agg}")]["value"]
                torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_all_reduce_sum_forward_and_backward(ranks):
    world = 3
    total = sum(range(1, world + 1))
    for res in ranks:
        want = torch.tensor([total, 2.0 * world], dtype=torch.float64)
        torch.testing.assert_close(res["all_reduce_sum"]["value"], want)
        # d/dv_r of sum_k <s, c_k> with c_k = (k + 1, 1): sum_k c_k on every rank
        want = torch.tensor([total, world], dtype=torch.float64)
        torch.testing.assert_close(res["all_reduce_sum"]["grad"], want)


def test_all_reduce_stats_rejects_per_sample_statistics(ranks):
    for res in ranks:
        assert "summed over the batch" in res["unsummed_stats"]


def test_without_process_group_distributed_is_the_identity():
    assert not dist.is_initialized()
    x = torch.randn(3, C, 5, 5, dtype=torch.float64)
    t = torch.randint(0, C, (3, 5, 5))
    a = diceloss.DiceLoss(batch_dice=True, distributed=True)(x, t)
    b = diceloss.DiceLoss(batch_dice=True)(x, t)
    assert float(a) == float(b)
    v = torch.ones(2, requires_grad=True)
    assert all_reduce_sum(v) is v


def test_distributed_needs_batch_dice():
    with pytest.raises(ValueError, match="batch_dice"):
        diceloss.DiceLoss(distributed=True)
    with pytest.raises(ValueError, match="batch_dice"):
        diceloss.DiceCELoss(distributed=True)
