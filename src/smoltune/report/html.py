"""Markdown to one self-contained HTML page (images embedded), and images inlined for Prefect artifacts.

python -c "from smoltune.report.html import render_html; print(render_html('# Hi', {}, 'title'))"
"""

from __future__ import annotations

import base64
import html

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
"""


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
    body = converter.convert(markdown_text)
    for name, data in images.items():
        body = body.replace(f'src="{name}"', f'src="{png_data_uri(data)}"')
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
