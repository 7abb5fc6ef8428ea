"""MkDocs hook (``hooks:`` in mkdocs.yml): expand the generated parts of every page at build time
(``docgen.expand``). A marker that names nothing stops the build."""

from __future__ import annotations

import docgen  # mkdocs puts this file's folder on sys.path while it loads the hook


def on_page_markdown(markdown, page, config, files):
    return docgen.expand(markdown)
