"""The documentation: ``mkdocs build --strict`` builds the pages with no warning, every page is in the nav, the
Python examples of the pages and of the README run (so what they show stays true), the README stays short."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import diceloss

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# a ```python block right after this comment is shown, not run; the reason says why (needs CUDA, torchrun, ...)
NOT_RUN = re.compile(r"^<!-- not run: (\S.*) -->$")
# pages the nav (filled by docs/hooks/nav.py from docs/losses/) and the README must have
LOSS_PAGES = ("losses/lovasz.md", "losses/cldice.md", "losses/hausdorff.md")


def nav_hook():
    spec = importlib.util.spec_from_file_location("docs_nav_hook", DOCS / "hooks" / "nav.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """The ```python blocks of a Markdown file: (first line number, code, reason it is not run or None)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip().startswith("```python"):
            assert lines[i] == "```python", f"{path}:{i + 1}: a python fence must be '```python' at column 0"
            before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            m = NOT_RUN.match(before.strip())
            start, i = i + 1, i + 1
            while i < len(lines) and lines[i] != "```":
                i += 1
            assert i < len(lines), f"{path}:{start}: unclosed code block"
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n", m.group(1) if m else None))
        i += 1
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out.extend(nav_files(value) if isinstance(value, list) else [value])
    return out


def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_mkdocs_build_strict_has_no_warning(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    log = proc.stdout + proc.stderr
    missing = [p for p in LOSS_PAGES if not (DOCS / p).exists()]
    assert proc.returncode == 0 and "WARNING" not in log, (f"missing pages: {missing}\n" if missing else "") + log
    for page in pages():
        rel = page.relative_to(DOCS)
        html = site / ("index.html" if rel.name == "index.md" else rel.with_suffix("") / "index.html")
        assert html.is_file(), f"{rel} was not built ({html})"
    # the pages load nothing from the network (the theme's highlight.js would come from a CDN)
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?:", text), f"{html} loads a remote file"


def test_every_page_is_in_the_nav_and_the_nav_names_only_pages():
    hook = nav_hook()
    raw = config()["nav"]
    assert hook.SECTION in [next(iter(i)) for i in raw if isinstance(i, dict)]
    assert "docs/hooks/nav.py" in config()["hooks"]
    nav = nav_files(hook.fill_nav(raw, DOCS))
    assert len(nav) == len(set(nav)), nav
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert set(LOSS_PAGES) <= set(nav)
    assert on_disk - set(nav) == set(), "pages missing from the nav of mkdocs.yml"
    assert set(nav) - on_disk == set(), "the nav names files that are not in docs/"


def test_nav_hook_picks_up_every_loss_page(tmp_path):
    hook = nav_hook()
    (tmp_path / "losses").mkdir()
    for name in ("zeta.md", "alpha.md", "notes.txt"):
        (tmp_path / "losses" / name).write_text("# x\n")
    nav = [{"Home": "index.md"}, {hook.SECTION: []}]
    assert hook.fill_nav(nav, tmp_path)[1] == {hook.SECTION: ["losses/alpha.md", "losses/zeta.md"]}
    with pytest.raises(ValueError, match="Losses beyond Dice"):
        hook.fill_nav([{"Home": "index.md"}], tmp_path)


def test_every_loss_is_documented_and_every_loss_page_is_linked():
    text = "\n".join(p.read_text() for p in pages())
    missing = [n for n in diceloss.__all__ if n.endswith("Loss") and not re.search(rf"\b{n}\b", text)]
    assert not missing, f"losses named on no page of docs/: {missing}"
    losses_page = (DOCS / "losses.md").read_text()
    unlinked = [p.name for p in sorted((DOCS / "losses").glob("*.md")) if f"(losses/{p.name}" not in losses_page]
    assert not unlinked, f"docs/losses.md links none of {unlinked}: add them to its 'Losses beyond' table"


def test_theme_fetches_nothing():
    cfg = config()
    assert cfg["theme"]["name"] == "mkdocs" and cfg["theme"]["highlightjs"] is False


@pytest.mark.parametrize("page", [*pages(), README], ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, tmp_path, monkeypatch):
    """Each page's ```python blocks run in order in one namespace, in an empty folder, seeded."""
    blocks = python_blocks(page)
    if not blocks:
        return
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for line, code, reason in blocks:
        if reason is not None:
            compile(code, f"{page}:{line}", "exec")  # shown code must at least be valid Python
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"{page.relative_to(ROOT)}, the block at line {line}: {type(err).__name__}: {err}")
        ran += 1
    assert ran > 0 or all(r for _, _, r in blocks)


def test_blocks_not_run_are_few_and_say_why():
    shown = [(p, line, r) for p in [*pages(), README] for line, _, r in python_blocks(p) if r is not None]
    total = sum(len(python_blocks(p)) for p in [*pages(), README])
    assert len(shown) <= total // 4, shown
    for page, line, reason in shown:
        assert len(reason.split()) >= 2, f"{page}:{line}: say why the block is not run"


def test_readme_is_short_and_points_to_the_pages():
    text = README.read_text()
    assert len(text.splitlines()) < 120
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 8, links
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
    for needed in ("make demo", "make test", "make docs", "AMD EPYC", "AVX-512"):
        assert needed in text, needed


def test_python_blocks_parser(tmp_path):
    md = tmp_path / "p.md"
    md.write_text("text\n\n```python\nx = 1\n```\n\n<!-- not run: needs a CUDA device -->\n```python\ny = 2\n```\n"
                  "```bash\nls\n```\n")
    assert python_blocks(md) == [(4, "x = 1\n", None), (9, "y = 2\n", "needs a CUDA device")]
