"""Finding the input files and streaming their bytes: plain files, members of 7-Zip archives, zstd NDJSON.

Archive members are streamed (py7zr decompresses into a writer we give it, on a background thread, through a bounded queue), so a
100 GB Posts.xml never touches the disk or the memory whole. Member names are only matched against the table names
(`Posts.xml`, ...) at the archive root; they never become paths.
"""
from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from data_prep.errors import CollectError, file_error

CHUNK = 1 << 20
TABLES = ("Posts", "Users", "Votes")


@dataclass(frozen=True)
class TableSource:
    """Where one dump table's bytes come from: a plain file, or a member of a .7z archive."""

    path: Path
    member: str | None = None  # the member name inside a .7z, None for a plain file
    size: int | None = None    # uncompressed bytes (for progress), when known

    @property
    def label(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


@dataclass
class SiteInput:
    """One Stack Exchange site: its tables and the files they come from."""

    site: str
    tables: dict[str, TableSource] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    ignored_members: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------- byte streams
def file_chunks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


class _Done:
    pass


def sevenzip_member_chunks(archive: Path, member: str, size: int = CHUNK, max_queued: int = 8) -> Iterator[bytes]:
    """Decompressed bytes of one archive member, streamed. A corrupt or truncated archive raises a one-line CollectError."""
    import py7zr
    from py7zr.io import Py7zIO, WriterFactory

    chunks: queue.Queue = queue.Queue(maxsize=max_queued)
    stop = threading.Event()
    written = [0]

    class Stopped(Exception):
        pass

    class QueueIO(Py7zIO):
        def __init__(self):
            self.buf = bytearray()

        def write(self, s) -> int:
            if stop.is_set():
                raise Stopped()
            self.buf += s
            written[0] += len(s)
            # py7zr writes ~20 MB blocks: queue them in `size` pieces so the queue bounds memory at max_queued * size
            while len(self.buf) >= size:
                chunks.put(bytes(self.buf[:size]))
                del self.buf[:size]
            return len(s)

        def flush(self):
            pass

        def read(self, size=None):
            return b""

        def seek(self, offset, whence=0):
            return 0

        def size(self):
            return written[0]

    writer = QueueIO()

    class Factory(WriterFactory):
        def create(self, filename):
            return writer

    def produce():
        try:
            with py7zr.SevenZipFile(archive, mode="r") as z:
                z.extract(targets=[member], factory=Factory())
            if writer.buf:
                chunks.put(bytes(writer.buf))
            chunks.put(_Done())
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, which names the file
            chunks.put(exc)

    thread = threading.Thread(target=produce, name=f"7z:{archive.name}", daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, BaseException):
                raise file_error(f"{archive}", f"member {member} near byte {written[0]}",
                                 f"corrupt or truncated archive ({type(item).__name__}: {item})")
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                chunks.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def table_chunks(source: TableSource) -> Iterator[bytes]:
    if source.member is None:
        return file_chunks(source.path)
    return sevenzip_member_chunks(source.path, source.member)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 4):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------- discovery
_SPLIT_ARCHIVE = re.compile(r"^(?P<site>.+)-(?P<table>Posts|Users|Votes|Comments|Badges|Tags|PostHistory|PostLinks)\.7z$", re.I)


def _site_of_archive(archive: Path) -> str:
    """`cooking.stackexchange.com.7z` -> cooking.stackexchange.com; Stack Overflow's `stackoverflow.com-Posts.7z` -> stackoverflow.com."""
    match = _SPLIT_ARCHIVE.match(archive.name)
    return match.group("site") if match else archive.name[: -len(".7z")]


def _archive_members(archive: Path) -> list[tuple[str, int]]:
    import py7zr

    try:
        with py7zr.SevenZipFile(archive, mode="r") as z:
            return [(info.filename, info.uncompressed) for info in z.list() if not info.is_directory]
    except Exception as exc:  # noqa: BLE001 -- any failure to read the header is a corrupt archive
        raise file_error(archive, "archive header", f"not a readable 7z archive ({type(exc).__name__}: {exc})") from None


def _add_archive(site: SiteInput, archive: Path) -> None:
    site.files.append(archive)
    for name, size in _archive_members(archive):
        table = next((t for t in TABLES if name.lower() == f"{t.lower()}.xml"), None)
        if table is None or table in site.tables:
            site.ignored_members.append(f"{archive.name}:{name}")
        else:
            site.tables[table] = TableSource(archive, name, size)


def _site_from_dir(directory: Path, site_name: str) -> SiteInput:
    site = SiteInput(site_name)
    for table in TABLES:
        matches = [p for p in directory.iterdir() if p.is_file() and p.name.lower() == f"{table.lower()}.xml"]
        if matches:
            site.tables[table] = TableSource(matches[0], None, matches[0].stat().st_size)
            site.files.append(matches[0])
    return site


def discover_stackexchange(path: str | os.PathLike, site_override: str | None = None) -> list[SiteInput]:
    """Sites under `path`: a site .7z, a directory of them (Stack Overflow's per-table archives are grouped), an extracted site
    directory, or a bare Posts.xml. Sorted by site name, so the output order never depends on the file system."""
    path = Path(path)
    if not path.exists():
        raise CollectError(f"source.path={path} does not exist")
    sites: dict[str, SiteInput] = {}
    if path.is_file():
        if path.suffix.lower() == ".7z":
            name = _site_of_archive(path)
            _add_archive(sites.setdefault(name, SiteInput(name)), path)
        elif path.name.lower().endswith(".xml"):
            if path.name.lower() != "posts.xml":
                raise CollectError(f"source.path={path}: a bare file must be a Posts.xml (got {path.name})")
            name = site_override or path.parent.name
            sites[name] = SiteInput(name, {"Posts": TableSource(path, None, path.stat().st_size)}, [path])
        else:
            raise CollectError(f"source.path={path}: expected a site .7z, a Posts.xml, or a directory of them")
    else:
        if any(p.name.lower() == "posts.xml" for p in path.iterdir()):
            name = site_override or path.name
            sites[name] = _site_from_dir(path, name)
        for archive in sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".7z"):
            name = _site_of_archive(archive)
            _add_archive(sites.setdefault(name, SiteInput(name)), archive)
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            if any(p.name.lower() == "posts.xml" for p in sub.iterdir()):
                sites.setdefault(sub.name, _site_from_dir(sub, sub.name))
    if site_override and len(sites) == 1:
        only = next(iter(sites.values()))
        only.site = site_override
        sites = {site_override: only}
    if not sites:
        raise CollectError(f"source.path={path}: no Stack Exchange site found (no .7z archive, Posts.xml or site directory)")
    for site in sites.values():
        if "Posts" not in site.tables:
            raise CollectError(f"source.path={path}: site {site.site} has no Posts.xml")
    return [sites[name] for name in sorted(sites)]


def discover_reddit(path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(submission files, comment files): monthly RS_/RC_ files or per-subreddit `<sub>_submissions`/`<sub>_comments`, .zst or
    plain NDJSON; a single file or a directory tree. Sorted, so the order never depends on the file system."""
    path = Path(path)
    if not path.exists():
        raise CollectError(f"source.path={path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    subs, coms = [], []
    for f in files:
        stem = f.name.split(".")[0]
        if stem.startswith("RS_") or stem.endswith("_submissions"):
            subs.append(f)
        elif stem.startswith("RC_") or stem.endswith("_comments"):
            coms.append(f)
    if not subs or not coms:
        raise CollectError(f"source.path={path}: need both submissions (RS_*.zst or *_submissions.zst) and comments "
                           f"(RC_*.zst or *_comments.zst); found {len(subs)} and {len(coms)}")
    return subs, coms


def zst_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of an NDJSON file, zstd-compressed (long window) or plain. A line longer than `max_line_bytes` is
    yielded as None without being held. A truncated or corrupt stream raises a one-line CollectError naming the position."""
    import zstandard

    compressed = path.suffix.lower() == ".zst"
    with open(path, "rb") as raw:
        if compressed:
            def chunks():
                dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
                dobj = dctx.decompressobj()
                while block := raw.read(CHUNK):
                    while block:
                        try:
                            out = dobj.decompress(block)
                        except zstandard.ZstdError as exc:
                            raise file_error(path, f"compressed byte {raw.tell()}", f"corrupt zstd stream ({exc})") from None
                        if out:
                            yield out
                        # a file of several frames (pzstd, concatenated months): the next frame starts in unused_data
                        block = dobj.unused_data if dobj.eof else b""
                        if dobj.eof and block:
                            dobj = dctx.decompressobj()
                if not dobj.eof:
                    raise file_error(path, f"compressed byte {raw.tell()}", "truncated zstd stream (the frame does not end)")
        else:
            def chunks():
                while block := raw.read(CHUNK):
                    yield block

        pending, line_no, skipping = b"", 0, False
        for chunk in chunks():
            data = pending + chunk if pending else chunk
            start = 0
            while True:
                nl = data.find(b"\n", start)
                if nl < 0:
                    break
                line_no += 1
                if skipping:
                    skipping = False
                    yield line_no, None
                else:
                    yield line_no, data[start:nl] if nl - start <= max_line_bytes else None
                start = nl + 1
            pending = data[start:]
            if len(pending) > max_line_bytes:
                skipping, pending = True, b""
        if skipping:
            yield line_no + 1, None
        elif pending.strip():
            yield line_no + 1, pending
