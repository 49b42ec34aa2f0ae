"""Markdown to one self-contained HTML page (images embedded), and images inlined for Prefect artifacts.

python -c "from smoltune.report.html import render_html; print(render_html('# Hi', {}, 'title'))"
"""

from __future__ import annotations

import base64
import html
from typing import Any

from markdown.treeprocessors import Treeprocessor

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
"""


class _InertLinks(Treeprocessor):
    """Links and images that came from data (a prompt, an answer, a column name) shown as their text: a report
    called self-contained never fetches a remote image or runs a `javascript:` link. Only the images the report
    itself names (its plots, embedded as data URIs) stay images; the report has no links of its own."""

    def __init__(self, md: Any, own_images: set[str]) -> None:
        super().__init__(md)
        self.own_images = own_images

    def run(self, root: Any) -> None:
        for element in root.iter():
            if element.tag == "a":
                element.tag = "span"
                element.attrib.clear()
            elif element.tag == "img" and element.get("src") not in self.own_images:
                element.tag, element.text = "span", f"[image: {element.get('alt') or ''}]"
                element.attrib.clear()


def png_data_uri(data: bytes) -> str:
    """A PNG as a data URI, so a page or a Prefect artifact shows it without access to the run folder."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def inline_images(markdown_text: str, images: dict[str, bytes]) -> str:
    """`markdown_text` with its `](name.png)` image links replaced by data URIs."""
    for name, data in images.items():
        markdown_text = markdown_text.replace(f"]({name})", f"]({png_data_uri(data)})")
    return markdown_text


def render_html(markdown_text: str, images: dict[str, bytes], title: str) -> str:
    """One self-contained page: the Markdown as HTML, images referenced by file name embedded as data URIs."""
    import markdown

    converter = markdown.Markdown(extensions=["tables", "fenced_code"])
    # Our Markdown never holds HTML on purpose; any that reaches it came from data and is shown as text.
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    converter.treeprocessors.register(_InertLinks(converter, set(images)), "smoltune_inert_links", 0)
    body = converter.convert(markdown_text)
    for name, data in images.items():
        body = body.replace(f'src="{name}"', f'src="{png_data_uri(data)}"')
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
