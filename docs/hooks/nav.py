"""mkdocs hook: the "Losses beyond Dice" section of the nav lists every page of docs/losses/.

A page added to docs/losses/ is then in the site, in the nav and in the strict build's link checks without an
edit of mkdocs.yml; each entry is titled by the page's first heading. (This folder is excluded from the pages:
``exclude_docs`` in mkdocs.yml.)
"""

from __future__ import annotations

from pathlib import Path

SECTION = "Losses beyond Dice"


def loss_pages(docs_dir: str | Path) -> list[str]:
    """The pages of ``docs_dir/losses``, as nav entries (paths relative to ``docs_dir``), sorted by name."""
    return sorted(f"losses/{p.name}" for p in (Path(docs_dir) / "losses").glob("*.md"))


def fill_nav(nav: list, docs_dir: str | Path) -> list:
    """``nav`` with the section :data:`SECTION` set to :func:`loss_pages`; ValueError if it has no such section."""
    for item in nav:
        if isinstance(item, dict) and SECTION in item:
            item[SECTION] = loss_pages(docs_dir)
            return nav
    raise ValueError(f"mkdocs.yml: the nav needs a {SECTION!r} section, for the pages of docs/losses/")


def on_config(config, **kwargs):
    fill_nav(config["nav"], config["docs_dir"])
    return config
