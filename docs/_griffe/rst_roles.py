"""A griffe extension for the API reference: Sphinx roles in docstrings become links.

aggkit's docstrings are numpydoc and cross-reference with Sphinx roles
(``:func:`aggkit.sum```, ``:class:`~aggkit.ClientBatch```), which Markdown would show verbatim.
This extension rewrites each role into an *optional* mkdocs-autorefs reference: a link when the
target is rendered somewhere in the API reference, plain code otherwise (no warning, so a strict
build does not fail on references to private helpers or kernels).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`(~?)([\w.]+)(\(\))?`")

#: Public names whose rendered object lives elsewhere (``aggkit.sum`` is also a module name).
ALIASES = {"aggkit.sum": "aggkit.sum.sum"}


def _replace(match: re.Match[str]) -> str:
    short, target, call = match.group(1), match.group(2), match.group(3) or ""
    shown = (target.rsplit(".", 1)[-1] if short else target) + call
    return (
        f'<autoref identifier="{html.escape(ALIASES.get(target, target))}" optional>'
        f"<code>{html.escape(shown)}</code></autoref>"
    )


def rewrite_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by an optional autoref."""
    return ROLE.sub(_replace, text)


class RstRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite_roles(obj.docstring.value)
