"""Reader for the Stack Exchange dump tables (`<posts><row .../>...</posts>`): safe, streaming, row-level error isolation.

The dump writes one `<row/>` per line (newlines inside attributes are `&#xA;`). We use that framing: complete lines are parsed in
blocks of about a megabyte with one `lxml` call (a C loop, as fast as iterparse); only a block that fails is re-parsed line by line,
so one malformed row is dropped with its reason and line number instead of ending the run.

Hostile input does no harm:
- no DTD ever reaches the parser: a `<!DOCTYPE`/`<!ENTITY` in the prolog ends the run (dumps never have one), and rows are parsed
  without a DTD, with entity resolution, network access and huge-tree mode off, so there is no XXE and no billion laughs;
- a line longer than `max_row_bytes` is skipped while it streams past (never held in memory) and counted as `row_too_large`.
A truncated file (no closing root tag, or a partial last row) or content that is not rows ends the run with a one-line error that
names the file, line and byte offset.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

from lxml import etree

from data_prep.errors import file_error

_PARSER_ARGS = dict(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
                    remove_comments=True, remove_pis=True, collect_ids=False)
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
NEWLINE = b"\n"


class BadRow:
    """A row that cannot be read: why, where, and the start of its text for rejects.jsonl."""

    __slots__ = ("reason", "line", "detail", "excerpt")

    def __init__(self, reason: str, line: int, detail: str = "", excerpt: bytes = b""):
        self.reason, self.line, self.detail = reason, line, detail
        self.excerpt = excerpt[:300].decode("utf-8", "replace")


def parser() -> etree.XMLParser:
    return etree.XMLParser(**_PARSER_ARGS)


def iter_rows(chunks: Iterable[bytes], name: str, root: str, max_row_bytes: int = 4 << 20) -> Iterator[tuple[int, object]]:
    """Yield `(line, attrs)` for each row (attrs: a read-only mapping of the row's attributes, valid until the next row is
    requested) or `(line, BadRow)` for a row that is refused.

    `chunks` is the decompressed byte stream of one table in any chunking; `name` names it in errors; `root` is the table's root
    element (`posts`, `users`, `votes`, ...).
    """
    close_tag = f"</{root}>".encode()
    xml_parser = parser()
    state = "prolog"          # prolog -> body -> closed
    pending = b""              # an incomplete last line
    skipping = False           # inside a line longer than max_row_bytes
    skip_start = 0
    line_no = 0                # lines completed so far
    offset = 0                 # bytes consumed before `pending`

    def where(line: int) -> str:
        return f"line {line} (byte {offset})"

    def prolog_line(raw: bytes, line: int) -> bytes | None:
        """Check one prolog line; return the remainder after the root's open tag once the root is seen, else None."""
        nonlocal state
        text = raw.strip()
        if line == 1 and text.startswith(b"\xef\xbb\xbf"):
            text = text[3:].lstrip()
        if not text:
            return None
        if text.startswith(b"<?xml"):
            enc = _ENCODING.search(text)
            if enc and enc.group(1).lower().replace(b"_", b"-") not in (b"utf-8", b"utf8"):
                raise file_error(name, where(line), f"encoding {enc.group(1).decode()!r} is not supported (dumps are UTF-8)")
            return None
        if text.startswith(b"<!"):
            raise file_error(name, where(line), "a DTD or entity declaration is not allowed in a dump file (refused: XXE / entity expansion)")
        match = re.match(rb"<([A-Za-z_][\w.-]*)\s*>", text)
        if not match:
            raise file_error(name, where(line), f"not a <{root}> dump table: starts with {text[:60]!r}")
        if match.group(1).decode().lower() != root:
            raise file_error(name, where(line), f"expected root <{root}>, found <{match.group(1).decode()}>")
        state = "body"
        return text[match.end():]

    def body_lines(block: bytes, first_line: int) -> Iterator[tuple[int, object]]:
        """Rows of a block of complete body lines: one parse for the block, line by line only if that fails."""
        try:
            tree = etree.fromstring(b"<r>" + block + b"</r>", xml_parser)
        except etree.XMLSyntaxError:
            tree = None
        if tree is not None:
            for el in tree:
                if el.tag == "row":
                    # the lazy attribute mapping: only the attributes a reader asks for become Python strings
                    yield first_line + el.sourceline - 1, el.attrib
                else:
                    yield first_line + el.sourceline - 1, BadRow("malformed_row", first_line + el.sourceline - 1,
                                                                 f"unexpected element <{el.tag}>")
            return
        for i, raw in enumerate(block.split(b"\n")):
            text = raw.strip()
            if not text:
                continue
            line = first_line + i
            if not text.startswith(b"<row"):
                raise file_error(name, f"line {line}", f"corrupt XML: expected a <row/> line, found {text[:60]!r}")
            try:
                el = etree.fromstring(text, xml_parser)
            except etree.XMLSyntaxError as exc:
                yield line, BadRow("malformed_row", line, str(exc).splitlines()[0][:200], text)
                continue
            yield line, dict(el.attrib)

    def complete(block: bytes, first_line: int) -> Iterator[tuple[int, object]]:
        """Handle a block of complete lines (ends with a newline) in any state."""
        nonlocal state
        if state == "prolog":
            lines = block.split(b"\n")
            for i, raw in enumerate(lines):
                rest = prolog_line(raw, first_line + i)
                if state == "body":
                    tail = b"\n".join([rest] + lines[i + 1:]) if rest is not None else b"\n".join(lines[i + 1:])
                    yield from complete(tail, first_line + i)
                    return
            return
        if state == "closed":
            if block.strip():
                raise file_error(name, f"line {first_line}", f"content after the closing </{root}>")
            return
        end = block.find(close_tag)
        if end >= 0:
            body, after = block[:end], block[end + len(close_tag):]
            yield from body_lines(body, first_line)
            state = "closed"
            if after.strip():
                raise file_error(name, f"line {first_line + body.count(NEWLINE)}", f"content after the closing </{root}>")
            return
        yield from body_lines(block, first_line)

    for chunk in chunks:
        data = pending + chunk if pending else chunk
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                offset += len(data)
                pending = b""
                continue
            line_no += 1
            yield line_no, BadRow("row_too_large", line_no, f"{offset + nl - skip_start} bytes > max_row_bytes={max_row_bytes}")
            offset += nl + 1
            data = data[nl + 1:]
            skipping = False
        cut = data.rfind(b"\n")
        if cut < 0:
            block, pending = b"", data
        else:
            block, pending = data[: cut + 1], data[cut + 1:]
        if block and len(block) > max_row_bytes:
            lines = block.split(b"\n")[:-1]
            if any(len(raw) > max_row_bytes for raw in lines):  # refuse an absurd row before any parser sees it
                for i, raw in enumerate(lines):
                    if len(raw) > max_row_bytes:
                        yield line_no + i + 1, BadRow("row_too_large", line_no + i + 1,
                                                      f"{len(raw)} bytes > max_row_bytes={max_row_bytes}", raw[:300])
                    else:
                        yield from complete(raw + b"\n", line_no + i + 1)
                line_no += len(lines)
                offset += len(block)
                block = b""
        if block:
            yield from complete(block, line_no + 1)
            line_no += block.count(b"\n")
            offset += len(block)
        if len(pending) > max_row_bytes:  # stream past the rest of this line without holding it
            skipping, skip_start = True, offset
            offset += len(pending)
            pending = b""
    # end of stream
    if skipping:
        raise file_error(name, f"line {line_no + 1} (byte {offset})", "truncated: the file ends inside an oversized row")
    if pending.strip():
        if state == "body" and pending.strip() == close_tag:
            state = "closed"
        elif state == "closed":
            raise file_error(name, f"line {line_no + 1}", f"content after the closing </{root}>")
        else:
            raise file_error(name, f"line {line_no + 1} (byte {offset})",
                             f"truncated: the file ends inside a row ({pending.strip()[:40]!r}...)")
    if state == "prolog":
        raise file_error(name, f"line {line_no} (byte {offset})", f"empty or not a dump table: no <{root}> element")
    if state == "body":
        raise file_error(name, f"line {line_no} (byte {offset})", f"truncated: no closing </{root}> (the file ends early)")
