"""Stack Exchange post bodies (rendered HTML) -> markdown, with markdownify.

Kept: fenced code blocks with their language (Stack Exchange marks it `lang-xxx` on <pre>, other renderers `language-xxx` on
<code>), inline code, links, lists, tables, block quotes, headings. LaTeX stays as written: markdown escaping of `_` and `*` is off,
so `$a_1 * b$` survives unchanged. Entities are decoded by the HTML parser. Runs of blank lines collapse to one (as in StackLLaMA).
"""
from __future__ import annotations

import re

from markdownify import ATX, MarkdownConverter

_LANG = re.compile(r"^(?:lang|language)-([\w+#.-]+)$")
_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
# Stack Exchange's "default" classes say nothing about the language.
_NOT_A_LANGUAGE = {"none", "default", "auto", "plaintext", "text", "prettyprint", "prettyprint-override"}


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


class _Converter(MarkdownConverter):
    pass


_CONVERTER = _Converter(heading_style=ATX, bullets="-", code_language_callback=code_language, escape_underscores=False,
                        escape_asterisks=False, escape_misc=False, bs4_options="lxml")


def html_to_markdown(html: str) -> str:
    if not html or not html.strip():
        return ""
    text = _CONVERTER.convert(html)
    return _BLANKS.sub("\n\n", text).strip()
