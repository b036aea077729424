"""Per-component (CC-Metrics) and lesion-wise metrics: hand-built cases, then panoptica and CCMetrics as oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from diceloss.metrics import component_metrics, connected_components, lesion_metrics, voronoi_cells
from diceloss.metrics.surface import segmentation_metrics


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], p: float = 0.04) -> np.ndarray:
    return ndimage.binary_dilation(rng.random(shape) < p, iterations=1 + int(rng.integers(0, 2)))


def _perturb(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    pred = np.roll(gt, int(rng.integers(-1, 2)), axis=0)
    pred = ndimage.binary_erosion(pred) if rng.random() < 0.5 else pred
    return pred ^ (rng.random(gt.shape) < 0.01)


# ---- hand-built -------------------------------------------------------------------------------------


def test_lesion_one_found_one_missed_one_false_positive():
    gt = np.zeros((12, 12), dtype=bool)
    gt[1:4, 1:4] = True  # found (IoU 1)
    gt[8:11, 8:11] = True  # missed
    pred = np.zeros_like(gt)
    pred[1:4, 1:4] = True
    pred[1:3, 8:11] = True  # false positive
    r = lesion_metrics(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(0.5)
    # F1 = 2TP / (2TP + FP + FN) = 2/4 (precision = recall = 1/2)
    assert r["f1"] == pytest.approx(0.5) and r["rq"] == r["f1"]
    assert r["sq"] == pytest.approx(1.0) and r["pq"] == pytest.approx(0.5)
    no_fp = pred.copy()
    no_fp[1:3, 8:11] = False
    r = lesion_metrics(no_fp, gt)  # one found, one missed, no false positive: F1 = 2/3
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1) and r["f1"] == pytest.approx(2 / 3)
    assert r["precision"] == 1.0 and r["recall"] == 0.5 and r["pq"] == pytest.approx(2 / 3)
    gt[1:3, 5:7] = True  # a third lesion, found by a second prediction
    pred[1:3, 8:11] = False
    pred[1:3, 5:6] = True  # IoU 2/4: not > 0.5 under "iou"
    r = lesion_metrics(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 2)
    r = lesion_metrics(pred, gt, strict=False)  # IoU >= 0.5 (panoptica's default comparison)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 1)
    assert r["f1"] == pytest.approx(0.8) and r["sq"] == pytest.approx(0.75) and r["pq"] == pytest.approx(0.6)
    r = lesion_metrics(pred, gt, match="overlap")
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 1) and r["f1"] == pytest.approx(0.8)


def test_lesion_split_component_matches_once():
    gt = np.zeros((1, 20), dtype=bool)
    gt[0, 2:12] = True  # one reference lesion of 10
    pred = np.zeros_like(gt)
    pred[0, 2:8] = True  # 6 of it: IoU 0.6
    pred[0, 9:12] = True  # 3 of it: IoU 0.3
    r = lesion_metrics(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["matches"] == [(1, 1, pytest.approx(0.6))]
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == 1.0 and r["f1"] == pytest.approx(2 / 3)
    assert r["pq"] == pytest.approx(0.6 * 2 / 3)
    r = lesion_metrics(pred, gt, match="overlap")  # one-to-one: the second blob is still a false positive
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    # the per-component view: one cell, Dice 2*9/(9+10)
    assert component_metrics(pred, gt) == {"dice": pytest.approx(18 / 19)}


def test_lesion_empty_and_connectivity():
    z = np.zeros((4, 4), dtype=bool)
    assert lesion_metrics(z, z)["f1"] == 1.0 and lesion_metrics(z, z)["pq"] == 1.0
    assert np.isnan(lesion_metrics(z, z, empty="nan")["f1"])
    one = z.copy()
    one[1, 1] = True
    r = lesion_metrics(one, z)
    assert (r["tp"], r["fp"], r["fn"], r["precision"], r["recall"], r["f1"]) == (0, 1, 0, 0.0, 0.0, 0.0)
    diag = np.eye(4, dtype=bool)
    assert connected_components(diag)[1] == 1  # full (8-) connectivity
    assert connected_components(diag, connectivity=1)[1] == 4
    assert connected_components(diag, connectivity=4)[1] == 4
    r = lesion_metrics(diag, diag, connectivity=4)
    assert (r["tp"], r["fp"], r["fn"]) == (4, 0, 0)


def test_voronoi_two_blobs_known_cell_dice():
    gt = np.zeros((10, 20), dtype=bool)
    gt[3:7, 2:6] = True  # component 1 (16 voxels), columns 2..5
    gt[3:7, 14:18] = True  # component 2, columns 14..17
    cells, n = voronoi_cells(gt)
    assert n == 2
    assert (cells[:, :10] == 1).all() and (cells[:, 10:] == 2).all()  # boundary halfway: columns 9 | 10
    pred = np.zeros_like(gt)
    pred[3:7, 2:6] = True  # component 1 found exactly
    pred[3:5, 14:18] = True  # half of component 2
    pred[0, 11:13] = True  # a false positive nearer component 2: counts in its cell
    rows = component_metrics(pred, gt, aggregate="components")
    assert [r["component"] for r in rows] == [1, 2] and [r["size"] for r in rows] == [16, 16]
    assert rows[0]["dice"] == 1.0
    assert rows[1]["dice"] == pytest.approx(2 * 8 / (10 + 16))
    assert component_metrics(pred, gt)["dice"] == pytest.approx((1 + 16 / 26) / 2)
    # a global Dice hides the difference CC-Dice shows when the small component is missed
    big = np.zeros((30, 30), dtype=bool)
    big[2:22, 2:22] = True
    big[26:28, 26:28] = True
    found = big.copy()
    found[26:28, 26:28] = False
    assert segmentation_metrics(found, big, metrics=("dice",))[1]["dice"] > 0.99
    assert component_metrics(found, big)["dice"] == pytest.approx(0.5)
    # spacing moves the cell boundary: x spacing 3 makes the column distance count triple
    g = np.zeros((9, 9), dtype=bool)
    g[0, 0] = True
    g[8, 8] = True
    assert voronoi_cells(g)[0][0, 8] in (1, 2) and voronoi_cells(g, spacing=(1, 3))[0][1, 7] == 2
    assert voronoi_cells(g, spacing=(1, 3))[0][7, 1] == 1


def test_component_distance_metrics_on_cells():
    gt = np.zeros((16, 32), dtype=bool)
    gt[4:10, 2:8] = True
    gt[4:10, 22:28] = True
    pred = np.roll(gt, 1, axis=0)
    pred[:, 16:] = False  # the second component is missed
    rows = component_metrics(pred, gt, ("dice", "hd95", "nsd", "recall"), aggregate="components")
    cells, _ = voronoi_cells(gt)
    ref = segmentation_metrics(pred & (cells == 1), gt & (cells == 1), metrics=("hd95", "nsd", "recall"))[1]
    assert rows[0]["hd95"] == pytest.approx(ref["hd95"]) and rows[0]["nsd"] == pytest.approx(ref["nsd"])
    assert rows[0]["recall"] == pytest.approx(5 / 6)
    assert rows[1]["dice"] == 0.0 and rows[1]["hd95"] == float("inf") and rows[1]["nsd"] == 0.0
    case = component_metrics(pred, gt, ("dice", "hd95"))
    assert case["hd95"] == float("inf") and case["dice"] == pytest.approx(rows[0]["dice"] / 2)
    # precomputed cells, torch input, a label of a label map
    lab = torch.from_numpy(gt.astype(np.int64) * 3)
    assert component_metrics(torch.from_numpy(pred.astype(np.int64) * 3), lab, label=3, cells=cells) == {
        "dice": pytest.approx(case["dice"])
    }


def test_component_empty_reference():
    z = np.zeros((5, 5), dtype=bool)
    one = z.copy()
    one[2, 2] = True
    assert component_metrics(z, z, ("dice", "hd95")) == {"dice": 1.0, "hd95": 0.0}
    assert component_metrics(one, z, ("dice", "hd95")) == {"dice": 0.0, "hd95": float("inf")}
    assert component_metrics(one, z, aggregate="components") == []


def test_errors_name_expected_and_got():
    z = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"binary mask .* got values \[0, 2\]"):
        component_metrics(z + 2 * np.eye(4, dtype=np.int64), z)
    with pytest.raises(ValueError, match=r"same shape, got \(4, 4\) and \(4, 5\)"):
        lesion_metrics(z, np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"neighbour count in \[4, 8\] .* got 6"):
        lesion_metrics(z, z, connectivity=6)
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\), got 1.5"):
        lesion_metrics(z, z, threshold=1.5)
    with pytest.raises(ValueError, match="aggregate"):
        component_metrics(z, z, aggregate="overall")
    with pytest.raises(ValueError, match="metric"):
        component_metrics(z, z, ("dsc",))


# ---- panoptica: lesion-wise matching, F1, SQ, PQ ----------------------------------------------------


def _panoptica(pred_ids: np.ndarray, gt_ids: np.ndarray, threshold: float, strict: bool):
    panoptica = pytest.importorskip("panoptica")
    ev = panoptica.Panoptica_Evaluator(
        expected_input=panoptica.InputType.UNMATCHED_INSTANCE,
        instance_matcher=panoptica.NaiveThresholdMatching(matching_threshold=threshold, strict_threshold=strict),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ev.evaluate(pred_ids.astype(np.int32), gt_ids.astype(np.int32), verbose=False)["ungrouped"]


@pytest.mark.parametrize("shape", [(48, 48), (20, 24, 24)])
@pytest.mark.parametrize("match", ["iou", "overlap"])
def test_lesion_metrics_match_panoptica(shape, match):
    """Panoptica on instance maps labelled here (its own labelling is 4-connected in 2D, 26 in 3D).

    Same definitions: one-to-one greedy matching by IoU descending; "overlap" is its threshold 0 with
    ``strict_threshold=True``; RQ = TP / (TP + FP/2 + FN/2), SQ = mean matched IoU, PQ = SQ * RQ.
    """
    rng = np.random.default_rng(len(shape) * 10 + len(match))
    checked = 0
    for _ in range(4):
        gt = _blobs(rng, shape)
        pred = _perturb(rng, gt)
        for conn in (None, 1):
            ours = lesion_metrics(pred, gt, match=match, connectivity=conn)
            gid, _ = connected_components(gt, connectivity=conn)
            pid, _ = connected_components(pred, connectivity=conn)
            ref = _panoptica(pid, gid, 0.5 if match == "iou" else 0.0, True)
            assert (ours["tp"], ours["fp"], ours["fn"]) == (ref.tp, ref.fp, ref.fn)
            for k, rk in (("precision", "prec"), ("recall", "rec"), ("rq", "rq"), ("sq", "sq"), ("pq", "pq")):
                assert ours[k] == pytest.approx(getattr(ref, rk), abs=1e-9), k
            checked += ours["tp"] > 0
    assert checked >= 4


def test_lesion_metrics_semantic_input_match_panoptica():
    """Panoptica's own labelling of a binary mask: scipy's default (4-connected) in 2D, cc3d (26) in 3D."""
    panoptica = pytest.importorskip("panoptica")
    rng = np.random.default_rng(7)
    for shape, conn in (((40, 40), 1), ((16, 20, 20), None)):
        gt = _blobs(rng, shape)
        pred = _perturb(rng, gt)
        ev = panoptica.Panoptica_Evaluator(
            expected_input=panoptica.InputType.SEMANTIC,
            instance_approximator=panoptica.ConnectedComponentsInstanceApproximator(),
            instance_matcher=panoptica.NaiveThresholdMatching(matching_threshold=0.5, strict_threshold=True),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ev.evaluate(pred.astype(np.uint8), gt.astype(np.uint8), verbose=False)["ungrouped"]
        ours = lesion_metrics(pred, gt, connectivity=conn)
        assert (ours["tp"], ours["fp"], ours["fn"]) == (ref.tp, ref.fp, ref.fn)
        assert ours["pq"] == pytest.approx(ref.pq, abs=1e-9)


# ---- CCMetrics: per-component Dice and HD95 (3D only, one-hot (1, 2, D, H, W), isotropic) -----------


def _ccmetrics():
    grad = torch.is_grad_enabled()  # CCMetrics switches autograd off globally when it is imported
    try:
        return pytest.importorskip("CCMetrics")
    finally:
        torch.set_grad_enabled(grad)


def _onehot(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.int64))
    return torch.nn.functional.one_hot(t, 2).permute(3, 0, 1, 2)[None].float()


def test_component_dice_matches_ccmetrics():
    """CCMetrics' CCDiceMetric: 26-connected components, unit-spacing Voronoi cells, Dice per cell."""
    ccm = _ccmetrics()
    rng = np.random.default_rng(3)
    for _ in range(3):
        gt = _blobs(rng, (16, 20, 20))
        pred = _perturb(rng, gt)
        metric = ccm.CCDiceMetric(cc_reduction="overall")
        metric(_onehot(pred), _onehot(gt))
        ref = metric.cc_aggregate().reshape(-1).numpy()
        rows = component_metrics(pred, gt, aggregate="components")
        np.testing.assert_allclose([r["dice"] for r in rows], ref, atol=1e-6)
        assert component_metrics(pred, gt)["dice"] == pytest.approx(float(ref.mean()), abs=1e-6)


def test_component_hd95_matches_ccmetrics():
    """CCMetrics' CCHausdorffDistance95Metric: MONAI's hd95 on the cropped cell (= ours, MONAI's definition).

    A cell without prediction is inf here and CCMetrics' ``metric_worst_score`` there; compared elsewhere.
    """
    ccm = _ccmetrics()
    grad = torch.is_grad_enabled()
    rng = np.random.default_rng(5)
    for _ in range(2):
        gt = _blobs(rng, (14, 18, 18))
        pred = _perturb(rng, gt)
        metric = ccm.CCHausdorffDistance95Metric(metric_worst_score=-1.0, cc_reduction="overall")
        torch.set_grad_enabled(grad)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric(_onehot(pred), _onehot(gt))
        ref = metric.cc_aggregate().reshape(-1).numpy()
        ours = np.array([r["hd95"] for r in component_metrics(pred, gt, ("hd95",), aggregate="components")])
        ours[np.isinf(ours)] = -1.0
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    torch.set_grad_enabled(grad)
