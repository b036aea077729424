"""``diceloss eval``: files in every format, folders with missing / mismatched / corrupt cases, outputs."""

import csv
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from diceloss.cli import main
from diceloss.metrics.surface import segmentation_metrics


def labels3d():
    gt = np.zeros((12, 12, 10), dtype=np.uint8)
    gt[2:8, 2:8, 2:7] = 1
    gt[8:11, 8:11, 6:9] = 2
    return gt


def run(capsys, *argv):
    code = main(["eval", "--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def folders(tmp_path):
    """pred/ and gt/ with five good cases in five formats, and four bad ones."""
    nib = pytest.importorskip("nibabel")
    Image = pytest.importorskip("PIL.Image")
    p, g = tmp_path / "pred", tmp_path / "gt"
    p.mkdir()
    g.mkdir()
    gt = labels3d()
    pred = np.roll(gt, 1, axis=0)
    np.save(g / "a.npy", gt)
    np.save(p / "a.npy", pred)
    np.savez(g / "b.npz", seg=gt, spacing=np.array([1.0, 1.0, 2.0]))
    np.savez(p / "b.npz", seg=pred)
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(gt.astype(np.int16), affine), g / "c.nii.gz")
    nib.save(nib.Nifti1Image(pred.astype(np.int16), affine), p / "c.nii.gz")
    Image.fromarray(gt[:, :, 4]).save(g / "d.png")  # label 2 is absent from this slice
    Image.fromarray(pred[:, :, 4]).save(p / "d.png")
    Image.fromarray(gt[:, :, 4]).save(g / "e.tif")
    Image.fromarray(pred[:, :, 4]).save(p / "e.tif")
    np.save(g / "missing.npy", gt)  # no prediction
    np.save(g / "mismatch.npy", gt)
    np.save(p / "mismatch.npy", gt[:, :, :5])
    np.save(g / "corrupt.npy", gt)
    (p / "corrupt.npy").write_bytes(b"this is not a numpy file")
    np.save(p / "extra.npy", gt)  # no ground truth
    (g / "notes.txt").write_text("ignored")
    return p, g


def test_folders_all_formats_and_failures(folders, tmp_path, capsys):
    p, g = folders
    out_csv, out_json = tmp_path / "s.csv", tmp_path / "s.json"
    code, out, err = run(capsys, p, g, "--csv", out_csv, "--json", out_json)
    assert code == 1
    # one line per failure as it happens, and the list at the end
    assert "missing: failed: no prediction: no file named missing.* in" in err
    assert "mismatch: failed: shape mismatch: prediction (12, 12, 5) vs ground truth (12, 12, 10)" in err
    assert "corrupt: failed:" in err and "corrupt.npy: not a .npy file" in err
    assert "1 prediction(s) without ground truth, not scored: extra.npy" in err
    assert "scored 5 of 8 case(s); labels 1, 2" in out
    tail = out.split("3 case(s) failed:")[1].strip().splitlines()
    assert [line.split(":")[0].strip() for line in tail] == ["corrupt", "mismatch", "missing"]
    # the summary table: label 1 dice is the mean over the five cases; n counts them
    row = next(line for line in out.splitlines() if line.split()[:2] == ["1", "dice"])
    dice1 = [segmentation_metrics(np.roll(labels3d(), 1, 0), labels3d())[1]["dice"]] * 3 + [
        segmentation_metrics(np.roll(labels3d(), 1, 0)[:, :, 4], labels3d()[:, :, 4])[1]["dice"]] * 2
    assert float(row.split()[2]) == pytest.approx(np.mean(dice1), abs=1e-4)
    assert row.split()[-1] == "5"

    rows = read_csv(out_csv)
    assert list(rows[0]) == ["case", "label", "dice", "iou", "precision", "recall", "avd", "rvd", "hd95",
                             "assd", "nsd", "error", "definition"]
    assert rows[0]["definition"] == "surface=voxel percentile=directed"  # the default, MONAI's
    by = {(r["case"], r["label"]): r for r in rows}
    assert {c for c, _ in by} == {"a", "b", "c", "d", "e", "missing", "mismatch", "corrupt"}
    assert by["mismatch", ""]["error"].startswith("shape mismatch")
    assert by["a", "1"]["error"] == ""
    # spacing: from the .npz array (b) and the NIfTI header (c); 1 for .npy (a)
    ref = {sp: segmentation_metrics(np.roll(labels3d(), 1, 0), labels3d(), spacing=sp)
           for sp in [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0), (0.5, 0.5, 3.0)]}
    for case, sp in (("a", (1.0, 1.0, 1.0)), ("b", (1.0, 1.0, 2.0)), ("c", (0.5, 0.5, 3.0))):
        for lab in (1, 2):
            for m in ("hd95", "assd", "avd", "nsd"):
                assert float(by[case, str(lab)][m]) == pytest.approx(ref[sp][lab][m]), (case, lab, m)
    # the 2D slices lack label 2 in both maps: the both-empty policy (dice 1, distances NaN)
    assert by["d", "2"]["dice"] == "1.0" and math.isnan(float(by["d", "2"]["hd95"]))

    doc = json.loads(out_json.read_text())
    assert [c["case"] for c in doc["cases"]] == ["a", "b", "c", "d", "e"]
    assert doc["cases"][2]["spacing"] == [0.5, 0.5, 3.0]
    assert doc["cases"][3]["metrics"]["2"]["hd95"] is None  # NaN -> null
    assert {f["case"] for f in doc["failed"]} == {"missing", "mismatch", "corrupt"}
    assert doc["unmatched_predictions"] == ["extra.npy"]
    s = doc["summary"]["2"]["hd95"]
    assert s["n"] == 3  # the two 2D cases have no label 2: NaN, left out
    assert doc["summary"]["1"]["dice"]["mean"] == pytest.approx(np.mean(dice1))


def test_single_files_options_and_jobs(tmp_path, capsys):
    gt = labels3d()
    pred = gt.copy()
    pred[pred == 2] = 0  # label 2 missed
    np.save(tmp_path / "g.npy", gt)
    np.save(tmp_path / "p.npy", pred)
    js = tmp_path / "o.json"
    code, out, err = run(capsys, tmp_path / "p.npy", tmp_path / "g.npy", "--labels", "1-3", "--metrics",
                         "dice,hd95,nsd", "--spacing", "2", "--tolerance", "2.5", "--json", js)
    assert code == 0, err
    doc = json.loads(js.read_text())
    m = doc["cases"][0]["metrics"]
    assert set(m) == {"1", "2", "3"} and set(m["1"]) == {"dice", "hd95", "nsd"}
    assert m["1"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    assert m["2"]["dice"] == 0.0 and m["2"]["hd95"] == "inf"  # one empty: inf by default
    assert m["3"] == {"dice": 1.0, "hd95": None, "nsd": 1.0}  # both empty
    assert doc["cases"][0]["spacing"] == [2.0, 2.0, 2.0]
    code, out, _ = run(capsys, tmp_path / "p.npy", tmp_path / "g.npy", "--empty-distance", "nan",
                       "--empty", "nan", "--labels", "2,3", "--json", js)
    m = json.loads(js.read_text())["cases"][0]["metrics"]
    assert m["2"]["hd95"] is None and m["2"]["dice"] == 0.0 and m["3"]["dice"] is None
    # --include-background, --ignore-index
    gt2 = gt.astype(np.int64)
    gt2[:, :, 0] = 255
    np.save(tmp_path / "g2.npy", gt2)
    code, out, _ = run(capsys, tmp_path / "p.npy", tmp_path / "g2.npy", "--include-background",
                       "--ignore-index", "255", "--json", js)
    assert code == 0
    assert set(json.loads(js.read_text())["cases"][0]["metrics"]) == {"0", "1", "2"}

    # --jobs: the same numbers from worker processes
    d_p, d_g = tmp_path / "jp", tmp_path / "jg"
    d_p.mkdir()
    d_g.mkdir()
    for k in range(3):
        np.save(d_g / f"c{k}.npy", gt)
        np.save(d_p / f"c{k}.npy", np.roll(gt, k, axis=1))
    c1, c2 = tmp_path / "one.csv", tmp_path / "two.csv"
    assert run(capsys, d_p, d_g, "--csv", c1)[0] == 0
    assert run(capsys, d_p, d_g, "--csv", c2, "--jobs", "2")[0] == 0
    assert read_csv(c1) == read_csv(c2) and len(read_csv(c1)) == 6


@pytest.mark.parametrize(
    "argv,message",
    [
        (["nope", "nope2"], "PRED 'nope' does not exist"),
        (["{f}", "{d}"], "must be two files or two folders"),
        (["{f}", "{f}", "--labels", "a"], "--labels: expected integers or ranges"),
        (["{f}", "{f}", "--metrics", "dice,hd99"], "--metrics: expected names from"),
        (["{f}", "{f}", "--spacing", "1,-2"], "--spacing: expected positive numbers"),
        (["{f}", "{f}", "--tolerance", "-1"], "--tolerance: expected a number >= 0"),
        (["{f}", "{f}", "--jobs", "0"], "--jobs: expected a number >= 1"),
        (["{d}", "{d}"], "no label maps"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    f = tmp_path / "x.npy"
    np.save(f, labels3d())
    d = tmp_path / "empty"
    d.mkdir()
    argv = [a.format(f=f, d=d) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_spacing_of_wrong_length_fails_the_case(tmp_path, capsys):
    np.save(tmp_path / "g.npy", labels3d())
    # with the progress bar on (tqdm, off when stderr is not a terminal): the reason still goes to stderr
    code = main(["eval", str(tmp_path / "g.npy"), str(tmp_path / "g.npy"), "--spacing", "1,2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "g: failed: spacing (1.0, 2.0) has 2 values for a 3D image" in err
    assert "1 case(s) failed:\n  g: spacing (1.0, 2.0)" in out


def test_entry_point_runs(tmp_path):
    np.save(tmp_path / "g.npy", labels3d())
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    g = str(tmp_path / "g.npy")
    proc = subprocess.run([sys.executable, "-m", "diceloss", "eval", g, g, "--metrics", "dice,hd95"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "scored 1 of 1 case(s); labels 1, 2" in proc.stdout


def test_ambiguous_names_fail_that_case(tmp_path, capsys):
    p, g = tmp_path / "p", tmp_path / "g"
    p.mkdir()
    g.mkdir()
    for d in (p, g):
        np.save(d / "ok.npy", labels3d())
    np.save(g / "dup.npy", labels3d())
    np.save(p / "dup.npy", labels3d())
    np.savez(p / "dup.npz", seg=labels3d())
    code, out, err = run(capsys, p, g)
    assert code == 1
    assert "dup: failed: several prediction files for one case: dup.npy, dup.npz" in err
    assert "scored 1 of 2 case(s)" in out


# ---- issue 15: outputs checked first, unreadable ground truth, NIfTI geometry, a dead worker -------------

def _case_folders(tmp_path, n=2):
    p, g = tmp_path / "p", tmp_path / "g"
    p.mkdir()
    g.mkdir()
    for k in range(n):
        np.save(g / f"c{k}.npy", labels3d())
        np.save(p / f"c{k}.npy", np.roll(labels3d(), k, axis=1))
    return p, g


@pytest.mark.parametrize("flag", ["--csv", "--json"])
@pytest.mark.parametrize("where", ["missing_dir", "a_folder"])
def test_unwritable_output_is_refused_before_scoring(tmp_path, capsys, monkeypatch, flag, where):
    from diceloss.cli import eval as ev

    p, g = _case_folders(tmp_path)
    bad = tmp_path / "no" / "such" / "out.x" if where == "missing_dir" else g
    other = "--json" if flag == "--csv" else "--csv"
    ok = tmp_path / "ok.out"
    scored = []
    monkeypatch.setattr(ev, "run_cases", lambda *a, **k: scored.append(1) or [])
    code, out, err = run(capsys, p, g, flag, bad, other, ok)
    assert code == 2, (out, err)
    assert f"{flag}: " in err and str(bad) in err and "Traceback" not in err
    assert not scored and not ok.exists()  # nothing scored, nothing half-written


def test_same_path_for_csv_and_json_is_refused(tmp_path, capsys):
    p, g = _case_folders(tmp_path)
    code, out, err = run(capsys, p, g, "--csv", tmp_path / "o", "--json", tmp_path / "o")
    assert code == 2 and "--csv and --json" in err


def test_unreadable_ground_truth_entries_are_failed_cases(tmp_path, capsys):
    p, g = _case_folders(tmp_path, 1)
    os.symlink(tmp_path / "nowhere.npy", g / "broken.npy")  # a broken symlink
    (g / "folder.nii.gz").mkdir()  # a folder named like a case
    os.symlink(g / "loop.npy", g / "loop.npy")  # a symlink loop
    for name in ("broken", "folder", "loop"):
        np.save(p / f"{name}.npy", labels3d())
    code, out, err = run(capsys, p, g)
    assert code == 1, (out, err)
    assert "scored 1 of 4 case(s)" in out
    assert "broken: failed: ground truth" in err and "broken symlink" in err
    assert "folder: failed: ground truth" in err and "a folder, not a file" in err
    assert "loop: failed: ground truth" in err
    assert "without ground truth" not in err


def _nifti(path, arr, affine):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(arr, affine), path)


def test_nifti_orientation_or_origin_mismatch_is_refused(tmp_path, capsys):
    pytest.importorskip("nibabel")
    g = np.zeros((12, 12, 10), np.uint8)
    g[3:8, 3:8, 2:7] = 1
    g[8:11, 1:4, 1:4] = 2
    aff = np.diag([0.8, 0.8, 3.0, 1.0])
    flip = aff.copy()
    flip[0, 0] = -0.8
    flip[0, 3] = 0.8 * 11
    shifted = aff.copy()
    shifted[:3, 3] = (5.0, 0.0, 0.0)
    p_dir, g_dir = tmp_path / "p", tmp_path / "g"
    p_dir.mkdir()
    g_dir.mkdir()
    for name, arr, a in (("same", g, aff), ("flipped", g[::-1].copy(), flip), ("moved", g, shifted)):
        _nifti(g_dir / f"{name}.nii.gz", g, aff)
        _nifti(p_dir / f"{name}.nii.gz", arr, a)
    code, out, err = run(capsys, p_dir, g_dir, "--metrics", "dice")
    assert code == 1, (out, err)
    assert "scored 1 of 3 case(s)" in out
    line = next(x for x in err.splitlines() if x.startswith("flipped: failed:"))
    assert "orientation" in line and "('L', 'A', 'S')" in line and "('R', 'A', 'S')" in line
    line = next(x for x in err.splitlines() if x.startswith("moved: failed:"))
    assert "origin" in line and "(5.0, 0.0, 0.0)" in line and "(0.0, 0.0, 0.0)" in line


def test_4d_nifti_is_refused(tmp_path, capsys):
    pytest.importorskip("nibabel")
    from diceloss.io import ReadError, read_label_map

    vol = np.zeros((12, 12, 10, 2), np.uint8)
    vol[3:8, 3:8, 2:7] = 1
    _nifti(tmp_path / "v.nii.gz", vol, np.diag([0.8, 0.8, 3.0, 1.0]))
    with pytest.raises(ReadError, match=r"expected a 2D or 3D label map, got 4D \(12, 12, 10, 2\)"):
        read_label_map(tmp_path / "v.nii.gz")
    code, out, err = run(capsys, tmp_path / "v.nii.gz", tmp_path / "v.nii.gz")
    assert code == 1 and "v: failed:" in err and "got 4D" in err


def _die_on_c2(case, opts):
    import signal

    from diceloss.cli import eval as ev

    if case.name == "c2":
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    time.sleep(0.2)  # the others are still running or queued when c2 dies
    return ev._real_evaluate_case(case, opts)


def test_a_dead_worker_fails_only_its_case(tmp_path, capsys, monkeypatch):
    from diceloss.cli import eval as ev

    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("needs fork: the patched function must reach the workers")
    p, g = _case_folders(tmp_path, 8)
    monkeypatch.setattr(ev, "_real_evaluate_case", ev.evaluate_case, raising=False)
    monkeypatch.setattr(ev, "evaluate_case", _die_on_c2)
    code, out, err = run(capsys, p, g, "--jobs", "3", "--metrics", "dice")
    assert code == 1, (out, err)
    assert "scored 7 of 8 case(s)" in out
    failed = out.split("1 case(s) failed:")[1].strip().splitlines()
    assert len(failed) == 1 and failed[0].strip().startswith("c2: worker process died")
    assert "SIGKILL" in failed[0]


def test_a_failed_write_keeps_the_other_output(tmp_path, capsys, monkeypatch):
    from diceloss.cli import eval as ev

    p, g = _case_folders(tmp_path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ev, "write_csv", full_disk)
    js = tmp_path / "o.json"
    code, out, err = run(capsys, p, g, "--csv", tmp_path / "o.csv", "--json", js)
    assert code == 1 and "--csv: could not write" in err and "No space left" in err
    assert len(json.loads(js.read_text())["cases"]) == 2


# ---- surface-distance definitions (--surface, --percentile) ---------------------------------------------

def _outlier_case(tmp_path):
    """A square and the same square plus a far speck: directed and pooled hd95 differ (see
    test_surface_definitions)."""
    gt = np.zeros((80, 80), np.uint8)
    gt[5:45, 5:45] = 1
    pred = gt.copy()
    pred[70:74, 70:74] = 1
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    return tmp_path / "p.npy", tmp_path / "g.npy", pred, gt


@pytest.mark.parametrize("surf,perc", [("voxel", "directed"), ("surfel", "directed"), ("voxel", "pooled"),
                                       ("surfel", "pooled")])
def test_surface_and_percentile_options(tmp_path, capsys, surf, perc):
    p, g, pred, gt = _outlier_case(tmp_path)
    out_csv, out_json = tmp_path / "s.csv", tmp_path / "s.json"
    code, out, err = run(capsys, p, g, "--surface", surf, "--percentile", perc, "--metrics", "hd,hd95,assd,nsd",
                         "--spacing", "0.8,1.2", "--csv", out_csv, "--json", out_json)
    assert code == 0, err
    want = segmentation_metrics(pred, gt, metrics=("hd", "hd95", "assd", "nsd"), spacing=(0.8, 1.2),
                                surface=surf, percentile=perc)[1]
    name = f"surface={surf} percentile={perc}"
    assert f"surface distances: {name}" in out
    (row,) = read_csv(out_csv)
    assert row["definition"] == name
    assert {k: float(row[k]) for k in want} == pytest.approx(want)
    doc = json.loads(out_json.read_text())
    assert doc["definitions"]["surface"] == surf and doc["definitions"]["percentile"] == perc
    assert doc["definitions"]["name"].startswith(name)
    assert doc["options"]["surface"] == surf and doc["options"]["percentile"] == perc
    assert doc["cases"][0]["metrics"]["1"]["hd95"] == pytest.approx(want["hd95"])


def test_default_definition_is_monai_and_printed(tmp_path, capsys):
    p, g, pred, gt = _outlier_case(tmp_path)
    js, cs = tmp_path / "s.json", tmp_path / "s.csv"
    code, out, err = run(capsys, p, g, "--json", js, "--csv", cs)
    assert code == 0, err
    assert "surface distances: surface=voxel percentile=directed (MONAI)" in out
    doc = json.loads(js.read_text())
    assert doc["definitions"] == {"surface": "voxel", "percentile": "directed",
                                  "name": "surface=voxel percentile=directed (MONAI)"}
    assert read_csv(cs)[0]["definition"] == "surface=voxel percentile=directed"  # every row names it
    assert doc["cases"][0]["metrics"]["1"]["hd95"] > 30
    # pooled (medpy) drops the speck: 0
    code, out, err = run(capsys, p, g, "--percentile", "pooled", "--json", js)
    assert code == 0 and json.loads(js.read_text())["cases"][0]["metrics"]["1"]["hd95"] == 0
    # overlap metrics only: no definition to print
    code, out, err = run(capsys, p, g, "--metrics", "dice")
    assert code == 0 and "surface distances" not in out


@pytest.mark.parametrize("argv,message", [
    (["--surface", "mesh"], "--surface: invalid choice: 'mesh' (choose from voxel, surfel)"),
    (["--percentile", "95"], "--percentile: invalid choice: '95' (choose from directed, pooled)"),
])
def test_bad_definition_options_exit_2(tmp_path, capsys, argv, message):
    p, g, _, _ = _outlier_case(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--no-progress", str(p), str(g), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message.replace("'", "") in err.replace("'", "")


# ---- component, lesion-wise and topology families (--metrics cc_dice,lesion_f1,...,cldice,betti0..2) ----------

FAMILY = "cc_dice,lesion_f1,lesion_precision,lesion_recall,pq,cldice,betti0,betti1,betti2"


def _family_case(tmp_path):
    """Label 1: two GT lesions, the prediction finds one exactly and misses the other, no false positive.
    Label 2: a GT ring, predicted filled in (one hole too few). Label 3: a line, predicted identically."""
    gt = np.zeros((32, 32), dtype=np.uint8)
    gt[2:6, 2:6] = 1
    gt[2:6, 20:24] = 1
    gt[12:20, 12:20] = 2
    gt[14:18, 14:18] = 0
    gt[26, 2:30] = 3
    pred = gt.copy()
    pred[2:6, 20:24] = 0
    pred[14:18, 14:18] = 2
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    return tmp_path / "p.npy", tmp_path / "g.npy"


def test_family_metrics_known_answers_in_csv_json_and_terminal(tmp_path, capsys):
    pytest.importorskip("skimage")
    p, g = _family_case(tmp_path)
    c, j = tmp_path / "s.csv", tmp_path / "s.json"
    code, out, _ = run(capsys, p, g, "--metrics", f"dice,hd95,{FAMILY}", "--csv", c, "--json", j)
    assert code == 0
    rows = {r["label"]: r for r in read_csv(c)}
    assert list(read_csv(c)[0]) == ["case", "label", "dice", "hd95", *FAMILY.split(","), "error", "definition"]
    one, ring, line = rows["1"], rows["2"], rows["3"]
    assert float(one["lesion_f1"]) == pytest.approx(2 / 3) and float(one["lesion_precision"]) == 1.0
    assert float(one["lesion_recall"]) == 0.5 and float(one["pq"]) == pytest.approx(2 / 3)  # SQ = 1
    assert float(one["cc_dice"]) == 0.5  # per GT component: 1 and 0; the global Dice is 2/3
    assert float(one["dice"]) == pytest.approx(2 / 3)
    assert float(one["betti0"]) == 1.0 and float(one["betti1"]) == 0.0
    assert float(ring["betti1"]) == 1.0 and float(ring["betti0"]) == 0.0
    assert float(ring["lesion_f1"]) == 1.0  # the filled disk still matches the ring (IoU 48/64 > 0.5)
    assert float(line["cldice"]) == 1.0 and float(line["cc_dice"]) == 1.0 and float(line["pq"]) == 1.0
    assert all(math.isnan(float(r["betti2"])) for r in rows.values())  # 2D: no cavities
    doc = json.loads(j.read_text())
    defs = doc["definitions"]
    assert {"cc_dice", "lesion", "cldice", "betti"} <= set(defs) and defs["surface"] == "voxel"
    assert "26 in 3D" in defs["cc_dice"] and "IoU > 0.5" in defs["lesion"] and "one-to-one" in defs["lesion"]
    assert "skeletonize" in defs["cldice"] and "dual" in defs["betti"]
    assert doc["cases"][0]["metrics"]["1"]["lesion_recall"] == 0.5
    assert doc["summary"]["2"]["betti1"]["mean"] == 1.0 and doc["summary"]["1"]["betti2"]["n"] == 0
    assert "lesion_precision" in out and "lesion: lesion-wise detection" in out


def test_family_metrics_alone_3d_cavity_and_aliases(tmp_path, capsys):
    gt = np.zeros((10, 10, 10), dtype=np.uint8)
    gt[2:8, 2:8, 2:8] = 1
    gt[4:6, 4:6, 4:6] = 0  # a closed cavity
    pred = gt.copy()
    pred[4:6, 4:6, 4:6] = 1
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    j = tmp_path / "s.json"
    code, out, _ = run(capsys, tmp_path / "p.npy", tmp_path / "g.npy", "--metrics", "betti,lesion", "--json", j)
    assert code == 0
    doc = json.loads(j.read_text())
    assert doc["options"]["metrics"] == ["betti0", "betti1", "betti2", "lesion_f1", "lesion_precision",
                                         "lesion_recall", "pq"]
    assert doc["cases"][0]["metrics"]["1"] == {"betti0": 0.0, "betti1": 0.0, "betti2": 1.0, "lesion_f1": 1.0,
                                               "lesion_precision": 1.0, "lesion_recall": 1.0,
                                               "pq": pytest.approx((216 - 8) / 216)}
    assert "surface distances" not in out  # no distance metric asked for


def test_family_metrics_of_a_label_absent_from_a_case(tmp_path, capsys):
    """A label seen in another case gets the both-empty values: --empty for the scores, 0 Betti errors."""
    d_p, d_g = tmp_path / "p", tmp_path / "g"
    d_p.mkdir()
    d_g.mkdir()
    gt = labels3d()
    np.save(d_g / "a.npy", gt)
    np.save(d_p / "a.npy", gt)
    np.save(d_g / "b.npy", np.where(gt == 2, 0, gt))
    np.save(d_p / "b.npy", np.where(gt == 2, 0, gt))
    c = tmp_path / "s.csv"
    assert run(capsys, d_p, d_g, "--metrics", "dice,cc_dice,pq,betti2", "--empty", "zero", "--csv", c)[0] == 0
    b2 = [r for r in read_csv(c) if r["case"] == "b" and r["label"] == "2"][0]
    assert (b2["dice"], b2["cc_dice"], b2["pq"], b2["betti2"]) == ("0.0", "0.0", "0.0", "0.0")


def test_metrics_all_and_default_are_unchanged(tmp_path, capsys):
    f = tmp_path / "x.npy"
    np.save(f, labels3d())
    j = tmp_path / "s.json"
    assert run(capsys, f, f, "--metrics", "all", "--json", j)[0] == 0
    assert json.loads(j.read_text())["options"]["metrics"] == ["dice", "iou", "precision", "recall", "avd", "rvd",
                                                               "hd", "hd95", "assd", "nsd"]
    assert run(capsys, f, f, "--json", j)[0] == 0
    doc = json.loads(j.read_text())
    assert "hd" not in doc["options"]["metrics"] and "cc_dice" not in doc["options"]["metrics"]
    assert set(doc["definitions"]) == {"surface", "percentile", "name"}


@pytest.mark.parametrize("names,message", [
    ("dice,lesion_f2", "unknown: lesion_f2"),
    ("cc_dice,ece", "calibration errors need predicted probabilities"),
])
def test_bad_family_names_exit_2_naming_the_valid_ones(tmp_path, capsys, names, message):
    f = tmp_path / "x.npy"
    np.save(f, labels3d())
    code, _, err = run(capsys, f, f, "--metrics", names)
    assert code == 2 and message in err
    if "unknown" in message:
        assert all(n in err for n in ("cc_dice", "lesion_f1", "pq", "cldice", "betti0", "betti2"))


def test_family_metrics_in_the_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("skimage")
    p, g = _family_case(tmp_path)
    rep = tmp_path / "rep"
    assert run(capsys, p, g, "--metrics", f"dice,{FAMILY}", "--report", rep)[0] == 0
    page = (rep / "index.html").read_text()
    assert 'class="families"' in page and "Voronoi cells" in page and "IoU &gt; 0.5" in page
    assert "<td>lesion_f1</td>" in page and (rep / "label_1_boxplots.png").exists()


# ---- lesion matching and connectivity options ----------------------------------------------------------------


def _save_pair(tmp_path, pred, gt):
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", gt)
    return tmp_path / "p.npy", tmp_path / "g.npy"


@pytest.mark.parametrize("flags,f1", [
    ((), 0.0),                                              # IoU 0.4 is not > 0.5
    (("--lesion-threshold", "0.3"), 1.0),
    (("--lesion-threshold", "0.4"), 0.0),                   # not > 0.4 ...
    (("--lesion-threshold", "0.4", "--lesion-inclusive"), 1.0),  # ... but >= 0.4
    (("--lesion-match", "overlap"), 1.0),
])
def test_lesion_match_options_decide_the_match_and_are_recorded(tmp_path, capsys, flags, f1):
    gt = np.zeros((9, 12), dtype=np.uint8)
    gt[5, 0:7] = 1
    pred = np.zeros_like(gt)
    pred[5, 3:10] = 1  # 4 shared of 10: IoU 0.4
    p, g = _save_pair(tmp_path, pred, gt)
    j = tmp_path / "s.json"
    code, out, _ = run(capsys, p, g, "--metrics", "lesion", "--json", j, *flags)
    assert code == 0
    doc = json.loads(j.read_text())
    got = doc["cases"][0]["metrics"]["1"]
    assert got["lesion_f1"] == f1 and got["lesion_recall"] == f1 and got["pq"] == pytest.approx(0.4 * f1)
    threshold = float(flags[1]) if flags and flags[0] == "--lesion-threshold" else 0.5
    match = "overlap" if "overlap" in flags else "iou"
    inclusive = "--lesion-inclusive" in flags
    options = {"connectivity": "full", "lesion_match": match, "lesion_threshold": threshold,
               "lesion_inclusive": inclusive}
    assert {k: doc["options"][k] for k in options} == options
    rule = "when they overlap" if match == "overlap" else f"IoU {'>=' if inclusive else '>'} {threshold:g}"
    assert rule in doc["definitions"]["lesion"] and rule in out


def test_connectivity_option_for_components_lesions_and_betti(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[1:3, 1:3] = 1
    gt[3:5, 3:5] = 1  # two squares touching at a corner: one component under full connectivity, two under face
    pred = np.zeros_like(gt)
    pred[1:3, 1:3] = 1
    p, g = _save_pair(tmp_path, pred, gt)
    values = {}
    for conn in ("full", "face"):
        j, rep = tmp_path / f"{conn}.json", tmp_path / f"rep_{conn}"
        code, out, _ = run(capsys, p, g, "--metrics", "cc_dice,lesion_f1,betti0", "--connectivity", conn,
                           "--json", j, "--report", rep)
        assert code == 0
        doc = json.loads(j.read_text())
        values[conn] = doc["cases"][0]["metrics"]["1"]
        want = {"connectivity": conn, "lesion_match": "iou", "lesion_threshold": 0.5, "lesion_inclusive": False}
        assert {k: doc["options"].get(k) for k in want} == want
        stated = "full connectivity: 8 in 2D, 26 in 3D" if conn == "full" else "face connectivity: 4 in 2D, 6 in 3D"
        dual = "background the dual 4 / 6" if conn == "full" else "background the dual 8 / 26"
        assert stated in doc["definitions"]["cc_dice"] and stated in doc["definitions"]["lesion"]
        assert dual in doc["definitions"]["betti"] and dual in out
        page = (rep / "index.html").read_text()
        assert stated in page and dual in page and "<td>connectivity</td>" in page
    # full: one GT component of 8 (IoU 0.5, not matched); face: two, one found exactly
    assert values["full"] == {"cc_dice": pytest.approx(2 / 3), "lesion_f1": 0.0, "betti0": 0.0}
    assert values["face"] == {"cc_dice": 0.5, "lesion_f1": pytest.approx(2 / 3), "betti0": 1.0}


@pytest.mark.parametrize("flags,message", [
    (("--metrics", "dice", "--lesion-threshold", "0.3"), "--lesion-threshold: applies to lesion_f1"),
    (("--metrics", "dice,cldice", "--connectivity", "face"), "--connectivity: applies to cc_dice"),
    (("--metrics", "cc_dice", "--lesion-inclusive"), "--lesion-inclusive: applies to lesion_f1"),
    (("--metrics", "pq", "--lesion-threshold", "1"), "--lesion-threshold: expected an IoU in [0, 1), got 1.0"),
    (("--metrics", "pq", "--lesion-threshold", "nan"), "--lesion-threshold: expected an IoU in [0, 1), got nan"),
    (("--metrics", "pq", "--lesion-match", "overlap", "--lesion-threshold", "0.2"),
     "expected --lesion-match iou (overlap matches any overlapping pair"),
])
def test_family_options_without_their_metrics_or_out_of_range_exit_2(tmp_path, capsys, flags, message):
    f = tmp_path / "x.npy"
    np.save(f, labels3d())
    code, _, err = run(capsys, f, f, *flags)
    assert code == 2 and message in err


def test_no_family_options_without_family_metrics(tmp_path, capsys):
    f = tmp_path / "x.npy"
    np.save(f, labels3d())
    j = tmp_path / "s.json"
    assert run(capsys, f, f, "--metrics", "dice,cldice", "--json", j)[0] == 0
    options = json.loads(j.read_text())["options"]  # clDice has no components to connect, nor lesions to match
    assert not {"connectivity", "lesion_match", "lesion_threshold", "lesion_inclusive"} & set(options)
    assert run(capsys, f, f, "--metrics", "betti", "--json", j)[0] == 0
    options = json.loads(j.read_text())["options"]
    assert options["connectivity"] == "full" and "lesion_match" not in options
