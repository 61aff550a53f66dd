"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml).

The docstrings use Sphinx's cross-reference roles (``:meth:`open```); mkdocstrings renders them
as the role's name followed by the code. The hook keeps the code and drops the role's name.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:meth|class|func|attr|exc|data|mod|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    """Drop the Sphinx role names left in front of rendered code."""
    return _ROLE.sub("", html)
