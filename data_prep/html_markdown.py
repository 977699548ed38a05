"""Stack Exchange post bodies (rendered HTML) -> markdown.

Two converters, the field's libraries, chosen with `source.converter`:
- `html_to_markdown` (default): the Rust-core html-to-markdown package, ~19x faster than markdownify on these bodies (0.148 vs
  2.81 ms per KB of HTML, `scripts/bench_collect.py`'s convert step), which decides the collector's throughput (docs/collect.md,
  "Speed and memory");
- `markdownify`: markdownify on BeautifulSoup/lxml, the converter StackLLaMA's pairs were made with.
Both keep fenced code blocks with their language (Stack Exchange marks it `lang-xxx` on <pre>, other renderers `language-xxx` on
<code>), inline code, links, lists, tables, block quotes and headings; LaTeX stays as written (markdown escaping of `_`, `*` and
other characters is off, so `$a_1 * b$` survives); entities are decoded. Runs of blank lines collapse to one (as in StackLLaMA).
"""
from __future__ import annotations

import re
from functools import lru_cache

_LANG = re.compile(r"^(?:lang|language)-([\w+#.-]+)$")
_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
# Stack Exchange's "no highlighting" classes name no language
_NOT_A_LANGUAGE = {"none", "default", "auto", "plaintext", "text", "nohighlight"}
_FENCE_NO_LANG = re.compile(r"^(\s*```)(?:none|default|auto|plaintext|text|nohighlight)[ \t]*$", re.M)
CONVERTERS = ("html_to_markdown", "markdownify")


def _classes(el) -> list[str]:
    value = el.get("class") or []
    return value.split() if isinstance(value, str) else list(value)


def code_language(pre) -> str:
    """The language of a <pre> block from `lang-xxx` / `language-xxx` on the <pre> or its <code>, else ''."""
    candidates = _classes(pre)
    code = pre.find("code")
    if code is not None:
        candidates += _classes(code)
    for cls in candidates:
        match = _LANG.match(cls)
        if match and match.group(1).lower() not in _NOT_A_LANGUAGE:
            return match.group(1)
    return ""


@lru_cache(maxsize=None)
def _converter(name: str):
    if name == "markdownify":
        from markdownify import ATX, MarkdownConverter

        return MarkdownConverter(heading_style=ATX, bullets="-", code_language_callback=code_language, escape_underscores=False,
                                 escape_asterisks=False, escape_misc=False, bs4_options="lxml").convert
    if name == "html_to_markdown":
        import html_to_markdown

        options = html_to_markdown.ConversionOptions(heading_style="atx", bullets="-", escape_asterisks=False,
                                                     escape_underscores=False, escape_misc=False, code_block_style="backticks",
                                                     extract_metadata=False)

        # The public convert() rebuilds the Rust options object on every call, which costs 4x the conversion itself on
        # short posts; build it once and call the binding directly (pinned <4 in setup.py; public API as the fallback).
        try:
            from html_to_markdown import _html_to_markdown as rust
            from html_to_markdown.api import _to_rust_conversion_options

            rust_options = _to_rust_conversion_options(options)

            def raw(html: str):
                return rust.convert(html=html, options=rust_options, visitor=None)
        except (ImportError, AttributeError):  # pragma: no cover - another release's layout
            def raw(html: str):
                return html_to_markdown.convert(html, options)

        def convert(html: str) -> str:
            text = raw(html).content or ""
            return _FENCE_NO_LANG.sub(r"\1", text) if "```" in text else text

        return convert
    raise ValueError(f"unknown converter {name!r} (choose {', '.join(CONVERTERS)})")


def html_to_markdown(html: str, converter: str = "html_to_markdown") -> str:
    if not html or not html.strip():
        return ""
    return _BLANKS.sub("\n\n", _converter(converter)(html)).strip()


def surely_nonempty(html: str) -> bool:
    """True only when the markdown of `html` cannot be empty, decided without converting it: the body opens with a bare <p>
    whose text starts with a letter or digit, which either converter keeps (most post bodies look like this). False means
    "convert it to find out", not "empty"."""
    return html.startswith("<p>") and len(html) > 3 and html[3].isalnum()
