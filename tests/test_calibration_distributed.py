"""The accumulating metrics under torch.distributed: two gloo processes on the CPU give, after ``compute()``'s
all-reduce (``diceloss.distributed.sum_state_over_ranks``), the single-process result on all the data.

One ``torch.multiprocessing.spawn`` of two ranks (a ``file://`` rendezvous, no port) runs every case: the four
batches split 2 + 2, 1 + 3, and 4 + 0 (rank 1 never calls ``update``: it contributes zeros and must still
join the all-reduce, or rank 0 would hang). The probabilities are multiples of 1/16, so every bin sum is
exact in float64 whatever the order of the additions: the global calibration errors and the global Dice
must be equal bit for bit; per-sample means (sums of quotients) to the last few ulps.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diceloss.metrics import CalibrationErrorMetric, DiceMetric

C = 3
# batch indices per rank
SPLITS = {"2+2": ([0, 1], [2, 3]), "1+3": ([0], [1, 2, 3]), "4+0": ([0, 1, 2, 3], [])}
# probability rows (summing to 1) that are multiples of 1/16, so that sums of them are exact
_ROWS = torch.tensor([[0.5, 0.25, 0.25], [0.75, 0.125, 0.125], [0.0625, 0.875, 0.0625], [0.25, 0.25, 0.5],
                      [0.125, 0.3125, 0.5625], [1.0, 0.0, 0.0], [0.375, 0.375, 0.25]], dtype=torch.float32)


def _batches():
    g = torch.Generator().manual_seed(18)
    out = []
    for _ in range(4):
        rows = torch.randint(0, len(_ROWS), (2, 5, 6), generator=g)
        probs = _ROWS[rows].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        target = torch.randint(0, C, (2, 5, 6), generator=g)
        target[0, :2] = probs[0, :, :2].argmax(0)  # some agreement, so the errors are not all alike
        pred = torch.randint(0, C, (2, 5, 6), generator=g)
        out.append((probs, target, pred))
    return out


def _metrics():
    """name -> (fresh metric, takes hard labels, exact in any order of summation)."""
    return {
        "ece_global": (CalibrationErrorMetric(num_classes=C, kind="ece", aggregation="global"), False, True),
        "mce_global": (CalibrationErrorMetric(num_classes=C, kind="mce", aggregation="global"), False, True),
        "ace_width_global": (CalibrationErrorMetric(num_classes=C, kind="ace", binning="width",
                                                    aggregation="global"), False, True),
        "ece_sample": (CalibrationErrorMetric(num_classes=C, kind="ece", aggregation="sample"), False, False),
        "ace_sample": (CalibrationErrorMetric(num_classes=C, kind="ace", aggregation="sample"), False, False),
        "dice_global": (DiceMetric(num_classes=C, aggregation="global"), True, True),
        "dice_sample": (DiceMetric(num_classes=C, aggregation="sample"), True, False),
    }


def _run(indices):
    """Every metric after updates with the batches ``indices``: name -> (per class, mean)."""
    batches = _batches()
    out = {}
    for name, (metric, hard, _) in _metrics().items():
        for i in indices:
            probs, target, pred = batches[i]
            metric.update(pred if hard else probs, target)
        out[name] = (metric.compute(reduction="none"), metric.compute())  # each compute() is a collective
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {split: _run(ranks[rank]) for split, ranks in SPLITS.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration_dist")
    before = os.environ.get("DICELOSS_NO_CPP")
    os.environ["DICELOSS_NO_CPP"] = "1"  # the workers need no compiled loss kernel
    try:
        mp.spawn(_worker, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True)
    finally:
        if before is None:
            del os.environ["DICELOSS_NO_CPP"]
        else:
            os.environ["DICELOSS_NO_CPP"] = before
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_data_is_exact_and_not_trivial():
    probs = torch.cat([b[0] for b in _batches()])
    assert torch.equal(probs * 16, (probs * 16).round()) and torch.allclose(probs.sum(1), torch.ones(()))
    single = _run([0, 1, 2, 3])
    for name, (per_class, _) in single.items():
        assert torch.isfinite(per_class).all() and float(per_class.abs().max()) > 0.01, name
        assert not torch.allclose(_run([0])[name][0], per_class), f"{name}: one batch must differ from all four"


@pytest.mark.parametrize("split", list(SPLITS))
def test_every_rank_gets_the_single_process_result(ranks, split):
    single = _run([0, 1, 2, 3])
    for name, (_, _, exact) in _metrics().items():
        want, want_mean = single[name]
        for rank, res in enumerate(ranks):
            got, got_mean = res[split][name]
            assert got.dtype == torch.float64 and got.shape == (C,)
            if exact:  # sums of multiples of 1/16 and of counts: no rounding anywhere
                assert torch.equal(got, want), (split, name, rank, got, want)
                assert torch.equal(got_mean, want_mean), (split, name, rank)
            else:  # sums of per-sample quotients, added in another order
                torch.testing.assert_close(got, want, rtol=1e-15, atol=0, msg=f"{split} {name} rank {rank}")
                torch.testing.assert_close(got_mean, want_mean, rtol=1e-15, atol=0)


def test_a_rank_without_data_contributes_zeros(ranks):
    # rank 1 of "4+0" saw nothing, yet both ranks report the result of rank 0's four batches
    assert all(torch.equal(ranks[0]["4+0"][n][0], ranks[1]["4+0"][n][0]) for n in _metrics())
