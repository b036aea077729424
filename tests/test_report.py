"""``diceloss eval ... --report DIR``: the page, its PNGs, its checks before scoring, and the page in a browser."""

import html
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from diceloss.cli import main, report

pytest.importorskip("matplotlib")

ODD_NAME = "a<b>&'c"  # a case name that must be escaped in the page


def labels3d():
    gt = np.zeros((12, 12, 10), dtype=np.uint8)
    gt[2:8, 2:8, 2:7] = 1
    gt[8:11, 8:11, 6:9] = 2
    return gt


def make_cases(root):
    """pred/ and gt/: four scored cases (one with label 2 missing: hd95 inf) and one that fails."""
    p, g = root / "pred", root / "gt"
    p.mkdir()
    g.mkdir()
    gt = labels3d()
    for i, name in enumerate(["c0", "c1", "c2", ODD_NAME]):
        pred = np.roll(gt, i, axis=0)
        np.save(g / f"{name}.npy", gt)
        np.save(p / f"{name}.npy", pred)
    no2 = gt.copy()
    no2[no2 == 2] = 0
    np.save(g / "c3.npy", gt)
    np.save(p / "c3.npy", no2)
    np.save(g / "bad.npy", gt)
    np.save(p / "bad.npy", gt[:, :, :4])
    return p, g


def run(capsys, *argv):
    code = main(["eval", "--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append(a.get("class"))
        if tag == "img":
            self.imgs.append(a["src"])

    def handle_data(self, data):
        self.text.append(data)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    p, g = make_cases(root)
    out = root / "out" / "nested"  # created, parents too
    code = main(["eval", "--no-progress", str(p), str(g), "--report", str(out), "--spacing", "1,1,2",
                 "--tolerance", "1.5"])
    return code, out


def test_report_page_tables_images_and_escaping(built):
    code, out = built
    assert code == 1  # the failed case still fails the run; the report is written all the same
    src = (out / "index.html").read_text()
    page = Page()
    page.feed(src)
    text = "".join(page.text)
    assert page.tables[0] == "summary" and "definitions" in page.tables and "failed" in page.tables
    assert page.tables.count("worst") == 4  # lowest Dice and highest HD95, labels 1 and 2
    assert sorted(page.imgs) == ["label_1_boxplots.png", "label_1_hd95_hist.png", "label_2_boxplots.png",
                                 "label_2_hd95_hist.png"]
    for src_name in page.imgs:  # relative, present, a real PNG
        assert not os.path.isabs(src_name) and "://" not in src_name
        w, h = png_size(out / src_name)
        assert w > 100 and h > 100
    assert sorted(os.listdir(out)) == sorted(["index.html", *page.imgs])
    # self-contained: no script, no remote resource
    assert "<script" not in src and "http://" not in src and "https://" not in src
    # the odd case name is escaped in the source and reads as itself
    assert html.escape(ODD_NAME) in src and ODD_NAME not in src
    assert ODD_NAME in text
    # worst cases: label 2's highest HD95 is c3 (label 2 missing from its prediction: inf), lowest Dice 0
    label2 = src.split('id="label-2"')[1].split('id="definitions"')[0]
    worst_hd = label2.split("highest HD95")[1]
    assert re.search(r"<td>c3</td><td class=\"num\">inf</td>", worst_hd)
    assert re.search(r"<td>c3</td><td class=\"num\">0</td>", label2.split("lowest Dice")[1])
    # the definitions: the options eval ran with and the spacing used
    defs = src.split('id="definitions"')[1].split('id="failed"')[0]
    for needle in ("<td>tolerance</td><td>1.5</td>", "<td>empty</td><td>one</td>",
                   "<td>empty_distance</td><td>inf</td>", "<td>spacing</td><td>1, 1, 2</td>", "(1, 1, 2)"):
        assert needle in defs, needle
    failed = src.split('id="failed"')[1]
    assert "<td>bad</td>" in failed and "shape mismatch" in failed


def test_report_shows_every_option_eval_has(tmp_path):
    """The surface definition (or any other option eval gains) is listed as eval passes it, unknown or not."""
    res = [SimpleNamespace(name="x", error=None, spacing=(1.0, 1.0), metrics={1: {"dice": 0.5, "hd95": 2.0}})]
    summary = {1: {m: {"mean": v, "std": 0.0, "median": v, "n": 1} for m, v in (("dice", 0.5), ("hd95", 2.0))}}
    opts = {"metrics": ("dice", "hd95"), "tolerance": 1.0, "surface": "surfel", "percentile": "pooled",
            "some_new_option": "<x>", "known_errors": {}}
    page = report.write(str(tmp_path / "r"), res, summary, [1], opts)
    src = open(page).read()
    assert "<td>surface</td><td>surfel</td>" in src and "<td>percentile</td><td>pooled</td>" in src
    assert "<td>some_new_option</td><td>&lt;x&gt;</td>" in src and "known_errors" not in src
    assert "None: every case was scored." in src


@pytest.mark.parametrize("kind", ["file", "under_file", "page_is_folder"])
def test_report_path_checked_before_scoring(tmp_path, capsys, kind):
    p, g = make_cases(tmp_path)
    f = tmp_path / "f.txt"
    f.write_text("x")
    target = {"file": f, "under_file": f / "r", "page_is_folder": tmp_path / "r"}[kind]
    if kind == "page_is_folder":
        (target / "index.html").mkdir(parents=True)
    code, out, err = run(capsys, p, g, "--report", target)
    assert code == 2
    assert err.startswith("diceloss eval: error: --report:") and repr(str(target)) in err
    assert len(err.strip().splitlines()) == 1 and "scored" not in out  # nothing scored


def test_report_without_matplotlib_fails_up_front(tmp_path, capsys, monkeypatch):
    p, g = make_cases(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code, out, err = run(capsys, p, g, "--report", tmp_path / "r")
    assert code == 2 and "scored" not in out
    assert err.strip() == "diceloss eval: error: --report: needs matplotlib to draw its plots: pip install matplotlib"
    assert not (tmp_path / "r").exists()


# the page in a real browser: Debian's chromium (`make test` installs it when it can)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "img-state";
  pre.textContent = Array.from(document.images, i =>
    `${i.getAttribute("src")} complete=${i.complete} size=${i.naturalWidth}x${i.naturalHeight}`).join("\\n");
  document.body.appendChild(pre);
});
</script>"""


def chromium(out, *args):
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", f"--user-data-dir={out}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`; `make test` "
                                             "installs it when run as root with apt-get)")
def test_report_in_headless_chromium(built, tmp_path):
    _, out = built
    t0 = time.perf_counter()
    # the DOM after load, with a probe (in a copy of the page, next to it) that writes each image's state into it
    probe = out / "probe.html"
    probe.write_text((out / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    finally:
        probe.unlink()
    assert '<table class="summary">' in dom and "<th>label</th>" in dom and "dice" in dom
    state = re.search(r'<pre id="img-state">(.*?)</pre>', dom, re.S)
    assert state, dom[-2000:]
    lines = state.group(1).strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        m = re.fullmatch(r"(\S+) complete=(\w+) size=(\d+)x(\d+)", line)
        w, h = png_size(out / m.group(1))
        assert m.group(2) == "true" and (int(m.group(3)), int(m.group(4))) == (w, h), line
    # a screenshot of the page itself: not blank, and the histograms' orange bars are painted
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", "--window-size=1100,3000", "--virtual-time-budget=10000",
             f"--screenshot={shot}", (out / "index.html").as_uri())
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (3000, 1100)
    assert img.std() > 0.05 and (img.min(axis=2) < 0.9).mean() > 0.02  # not a blank page
    orange = (np.abs(img - np.array([1.0, 0.498, 0.055])).max(axis=2) < 0.05).sum()
    assert orange > 500, orange  # tab:orange histogram bars: the PNGs were drawn, not just their alt text
    print(f"chromium: {time.perf_counter() - t0:.2f} s for --dump-dom and --screenshot")
