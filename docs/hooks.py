"""MkDocs hook: write the API reference pages from the package itself at build time.

One page per public module (``docs/api_inventory.py`` finds them by importing ``avila_ml``),
each an mkdocstrings ``:::`` directive listing the names that module exports and defines;
names it re-exports from another public module link to the page that documents them. A module
added to the package later gets its page without editing this site.
"""
from __future__ import annotations

import os
import sys

from mkdocs.structure.files import File

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api_inventory  # noqa: E402

_pages: dict = {}


def _page_path(module: str) -> str:
    return f"reference/{module}.md"


def _render(module: str, items: list) -> str:
    own = [n for n, h in items if h == module]
    other = [(n, h) for n, h in items if h != module]
    lines = [f"# `{module}`", ""]
    lines += [f"::: {module}", "    options:", "      show_root_heading: false", "      show_root_toc_entry: false"]
    lines.append("      members:" + ("" if own else " []"))
    lines += [f"        - {n}" for n in own]
    if other:
        lines += ["", "## Re-exported names", "",
                  f"Also available as `{module}.<name>`, documented where they are defined:", "",
                  "| name | documented in |", "| --- | --- |"]
        lines += [f"| `{n}` | [`{h}.{n}`]({h}.md#{h}.{n}) |" for n, h in other]
    return "\n".join(lines) + "\n"


def on_config(config):
    inv = api_inventory.inventory()
    _pages.clear()
    for module, items in inv.items():
        _pages[_page_path(module)] = _render(module, items)
    ref = [{m: _page_path(m)} for m in inv]
    nav = [e for e in config["nav"] if not (isinstance(e, dict) and "API reference" in e)]
    nav.append({"API reference": ref})
    config["nav"] = nav
    return config


def on_files(files, config):
    for path, content in _pages.items():
        files.append(File.generated(config, path, content=content))
    return files
