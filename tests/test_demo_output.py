"""What ``diceloss demo`` and ``diceloss eval`` write: progress lines when not on a terminal (no carriage-return
redraws in a log), and the demo without matplotlib (one note at the start, never a crash after training)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diceloss.cli import main
from diceloss.cli import progress as progress_mod
from diceloss.cli.progress import LineProgress, SilentProgress, progress
from diceloss.demo import DemoConfig, run_demo

TINY = ["--size", "32", "--train", "6", "--val", "3", "--batch-size", "3", "--width", "4", "--depth", "2",
        "--target-dice", "0", "--seed", "1"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------------------------------------
# the progress object


def test_line_progress_prints_at_most_one_line_per_interval_and_a_last_one():
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(1000, desc="  DiceLoss", unit="step", file=out, interval=5.0, clock=clock)
    for _ in range(1000):  # 1000 steps over 60 s: a tqdm bar would redraw hundreds of times
        clock.t += 0.06
        bar.set_postfix(loss="0.5000", dice="0.250")
        bar.update(1)
    bar.set_description("DiceLoss (val Dice 0.800)")
    bar.close()
    bar.close()  # a second close writes nothing
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 12 <= len(lines) == bar.lines <= 13  # one per 5 s of 60 s, and the last one
    assert lines[0].startswith("DiceLoss: ") and "/1000 steps (" in lines[0] and "ETA" in lines[0]
    assert lines[0].endswith("; loss=0.5000 dice=0.250")
    assert lines[-1].startswith("DiceLoss (val Dice 0.800): 1000/1000 steps (100%) in 60 s;"), lines[-1]


def test_line_progress_of_a_short_run_is_its_last_line_only():
    clock, out = FakeClock(), io.StringIO()
    with LineProgress(3, desc="eval", unit="case", file=out, clock=clock) as bar:
        for _ in range(3):
            clock.t += 0.5
            bar.update()
        bar.write("b: failed: shape mismatch")
    assert out.getvalue() == "b: failed: shape mismatch\neval: 3/3 cases (100%) in 2 s\n"
    with pytest.raises(ValueError, match="interval must be a number of seconds >= 0, got -1"):
        LineProgress(3, interval=-1)


def test_progress_picks_tqdm_only_on_a_terminal():
    tqdm = pytest.importorskip("tqdm")
    assert isinstance(progress(5, file=io.StringIO()), LineProgress)
    bar = progress(5, file=Terminal())
    assert isinstance(bar, tqdm.tqdm)
    bar.close()
    silent = progress(5, file=Terminal(), enabled=False)
    assert isinstance(silent, SilentProgress)
    out = io.StringIO()
    silent = progress(5, file=out, enabled=False)
    silent.update(5)
    silent.close()
    assert out.getvalue() == ""


def test_progress_without_tqdm_prints_lines_on_a_terminal_too(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert isinstance(progress(5, file=Terminal()), LineProgress)


# ------------------------------------------------------------------------------------------------
# eval


def _cases(tmp_path, n):
    p, g = tmp_path / "pred", tmp_path / "gt"
    p.mkdir()
    g.mkdir()
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[2:7, 3:8] = 1
    for i in range(n):
        np.save(g / f"case_{i:02d}.npy", gt)
        np.save(p / f"case_{i:02d}.npy", np.roll(gt, i % 3, axis=0))
    return p, g


def test_eval_not_on_a_terminal_writes_progress_lines_not_redraws(tmp_path, capsys, monkeypatch):
    p, g = _cases(tmp_path, 6)
    assert main(["eval", str(p), str(g), "--metrics", "dice"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("eval: 6/6 cases (100%) in "), err  # the last line, at least
    # the lines come from the progress object: with no interval, one per case and the last one
    monkeypatch.setattr(progress_mod, "INTERVAL", 0.0)
    assert main(["eval", str(p), str(g), "--metrics", "dice"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("eval: ")]
    assert len(lines) == 7 and lines[0].startswith("eval: 1/6 cases (16%)"), lines
    assert main(["eval", "--no-progress", str(p), str(g), "--metrics", "dice"]) == 0
    assert capsys.readouterr().err == ""


def test_eval_redirected_writes_few_progress_lines(tmp_path):
    p, g = _cases(tmp_path, 40)
    proc = subprocess.run([sys.executable, "-m", "diceloss", "eval", str(p), str(g), "--metrics", "dice,hd95"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("eval: ")]
    assert 1 <= len(lines) <= 5 and lines[-1].startswith("eval: 40/40 cases (100%)"), proc.stderr


# ------------------------------------------------------------------------------------------------
# demo


def _hidden_matplotlib(args: list[str]) -> subprocess.CompletedProcess:
    """``diceloss demo ARGS`` in a Python where ``import matplotlib`` fails, output redirected to pipes."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # an import of it now raises ImportError
            "from diceloss.cli import main\n"
            f"raise SystemExit(main({['demo', *args]!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)


def test_demo_without_matplotlib_says_so_first_and_runs(tmp_path):
    out = tmp_path / "run"
    proc = _hidden_matplotlib([*TINY, "--steps", "2", "--loss", "dice", "--loss", "ce", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = [ln for ln in proc.stdout.splitlines() if ln.startswith("note:")]
    assert notes == ["note: the figure demo.png needs matplotlib, which is not installed: "
                     "pip install 'diceloss[demo]' (or --no-figure); the demo runs without it"]
    assert proc.stdout.splitlines().index(notes[0]) < proc.stdout.splitlines().index(
        next(ln for ln in proc.stdout.splitlines() if ln.startswith("data: ")))  # before any training
    assert "Traceback" not in proc.stderr
    assert sorted(f.name for f in out.iterdir()) == ["results.json", "table.txt"]
    assert [r["title"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["DiceLoss", "CE"]
    assert f"wrote {out / 'results.json'}, {out / 'table.txt'}" in proc.stdout
    # progress went to the redirected stderr: lines, not carriage-return redraws
    assert "\r" not in proc.stderr
    bars = [ln for ln in proc.stderr.splitlines() if " steps (" in ln]
    assert len(bars) == 2 and all(": 2/2 steps (100%) in " in ln for ln in bars), proc.stderr
    # --no-figure asks for no figure: no note
    proc = _hidden_matplotlib([*TINY, "--steps", "1", "--loss", "dice", "--out", str(out), "--no-figure"])
    assert proc.returncode == 0 and "note:" not in proc.stdout, proc.stdout + proc.stderr


def test_demo_redirected_writes_few_progress_lines(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diceloss", "demo", *TINY, "--steps", "40", "--val-every", "10",
                           "--loss", "dice", "--loss", "jaccard", "--out", str(tmp_path), "--no-figure"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\r" not in proc.stderr
    bars = [ln for ln in proc.stderr.splitlines() if " steps (" in ln]
    # a line per 5 s at most and the last one of each run: 80 steps that take seconds give a handful
    assert 2 <= len(bars) <= 8, proc.stderr
    assert bars[-1].startswith("JaccardLoss (val Dice ") and ": 40/40 steps (100%)" in bars[-1], bars


def test_a_figure_that_fails_to_draw_does_not_lose_the_run(tmp_path, monkeypatch):
    import diceloss.demo as demo

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(demo, "save_figure", broken)
    lines: list[str] = []
    cfg = DemoConfig(size=32, n_train=6, n_val=3, steps=1, batch_size=3, width=4, depth=2, losses=("dice",),
                     out=str(tmp_path), progress=False, target_dice=0.0)
    summary = run_demo(cfg, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert summary["ok"]
    assert f"note: could not draw {tmp_path / 'demo.png'} (RuntimeError: no display)" in lines
    assert sorted(f.name for f in tmp_path.iterdir()) == ["results.json", "table.txt"]
