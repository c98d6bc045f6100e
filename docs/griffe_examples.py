"""Griffe extension for the API reference: our docstrings head their doctests ``Example:``;
Google style reads only ``Examples:`` as code (``Example:`` is a free-text admonition, where a
printed ``[[1., 2.]]`` would read as a Markdown link). Rename the header before parsing."""
from __future__ import annotations

import re

import griffe

_HEADER = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExamplesHeader(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        doc = getattr(obj, "docstring", None)
        if doc is not None and "Example:" in doc.value:
            doc.value = _HEADER.sub(r"\1Examples:", doc.value)
