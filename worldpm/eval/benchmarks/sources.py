"""Where benchmark records come from: a local file or directory in the benchmark's real format, a hub id (`datasets`), or
the URL of a file that lives outside the hub (EvalBiasBench's `biasbench.json` is in its GitHub repository), downloaded once
into worldpm's cache.

Local files: `.jsonl`, `.json` (a list, an object, or JSON lines), `.parquet`, each optionally `.gz`. Every record carries a
locator (`file:line` or `file[row N]`) so a malformed record is reported in one line naming file and record.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow.parquet as pq
import datasets

from worldpm.atomic_dir import atomic_path
from worldpm.errors import UserError
from worldpm.model.tokenizer import cache_dir

log = logging.getLogger("worldpm.eval")

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Record:
    data: Any
    where: str


def is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(DATA_SUFFIXES) and not path.name.startswith(".")


def locate(path: str, benchmark: str) -> Path | str:
    """A local Path when `path` exists (or is a URL, downloaded once); the hub id when it looks like one; else a one-line error."""
    if not path:
        raise UserError(f"benchmark {benchmark}: no path set (benchmark.{benchmark}.path=<file, directory or hub id>)")
    if str(path).startswith(("https://", "http://")):
        return download(str(path), benchmark)
    local = Path(str(path)).expanduser()
    if local.exists():
        return local
    text = str(path)
    if text.startswith((".", "/", "~")) or text.endswith(DATA_SUFFIXES) or not _HUB_ID.fullmatch(text):
        raise UserError(f"benchmark {benchmark}: {text} does not exist")
    return text


def download(url: str, benchmark: str) -> Path:
    """The file at `url`, fetched once into `<worldpm cache>/benchmarks/<hash of url>/<its name>` (atomically: an interrupted
    download leaves nothing that looks complete). Offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) or unreachable: one line
    telling the user to download it and point `path` at the file."""
    name = Path(urllib.request.url2pathname(url.split("?")[0].rstrip("/").rsplit("/", 1)[-1])).name or "data"
    target = cache_dir() / "benchmarks" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.exists():
        return target
    advice = f"download it and set benchmark.{benchmark}.path=<the file>"
    if any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        raise UserError(f"benchmark {benchmark}: {url} is not in the cache and downloads are off (HF_DATASETS_OFFLINE / "
                        f"HF_HUB_OFFLINE); {advice}")
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading %s", benchmark, url)
    try:
        with atomic_path(target) as tmp, tmp.open("wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise UserError(f"benchmark {benchmark}: cannot download {url} ({type(exc).__name__}: {exc}); {advice}") from None
    return target


def data_files(directory: Path, benchmark: str, prefer: str | None = None) -> list[Path]:
    """Data files under a directory (recursive, sorted); with `prefer`, only those whose name contains it when any does
    (a hub snapshot holding several splits, e.g. RewardBench's raw-* and filtered-* parquet files)."""
    files = sorted(p for p in directory.rglob("*")
                   if is_data_file(p) and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if prefer:
        preferred = [p for p in files if prefer in p.name]
        files = preferred or files
    if not files:
        raise UserError(f"benchmark {benchmark}: no data files ({', '.join(DATA_SUFFIXES)}) in {directory}")
    return files


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else path.open(encoding="utf-8")


def read_json_any(path: Path) -> Any:
    """A whole JSON document (list or object), or a list of records when the file is JSON lines."""
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # a .json file that is really JSON lines falls through to the line reader
                raise UserError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    rows = _JsonLines()
    for lineno, line in enumerate(text.split("\n"), 1):  # text mode reads \r\n and \r as \n
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        rows.lines.append(lineno)
    return rows


class _JsonLines(list):
    """Records read line by line, with the (1-based) line each came from, so locators name the line."""

    def __init__(self):
        super().__init__()
        self.lines: list[int] = []


def read_local(path: Path, list_of: str | None = None) -> list[Record]:
    """Records of one file: a JSON list / JSON lines / parquet rows. A JSON object is returned as one Record, or, with
    `list_of` (what the records are, for the message), refused."""
    if path.name.endswith(".parquet"):
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        return [Record(r, f"{path}[row {i}]") for i, r in enumerate(rows)]
    doc = read_json_any(path)
    if isinstance(doc, _JsonLines):
        return [Record(r, f"{path}:{n}") for r, n in zip(doc, doc.lines)]
    if isinstance(doc, list):
        return [Record(r, f"{path}[record {i}]") for i, r in enumerate(doc)]
    if list_of:
        raise UserError(f"{path}: expected a JSON list of {list_of}, got a JSON {type(doc).__name__}")
    return [Record(doc, str(path))]


def read_hub(hub_id: str, benchmark: str, split: str | None = None, name: str | None = None,
             data_files: str | list[str] | None = None) -> list[Record]:
    """Rows of a hub dataset through `datasets.load_dataset` (needs network or a warm cache)."""
    kwargs = {k: v for k, v in (("name", name), ("split", split or "train"), ("data_files", data_files)) if v is not None}
    log.info("%s: loading %s from the hub (%s)", benchmark, hub_id, ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    try:
        ds = datasets.load_dataset(hub_id, **kwargs)
    except Exception as exc:  # offline, unknown repo, unknown split...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"benchmark {benchmark}: {hub_id} is not a local file or directory and could not be loaded from the hub "
                        f"({type(exc).__name__}: {msg})") from None
    return [Record(row, f"{hub_id}[{kwargs['split']}][row {i}]") for i, row in enumerate(ds)]


# ---------------------------------------------------------------------- validation helpers
def need(record: Record, key: str, kind: type | tuple[type, ...], what: str | None = None):
    """`record.data[key]`, checked to be of `kind`; anything else is a one-line error naming file, record and field."""
    data = record.data
    if not isinstance(data, Mapping):
        raise UserError(f"{record.where}: expected a JSON object, got {type(data).__name__}")
    if key not in data or data[key] is None:
        raise UserError(f"{record.where}: missing field {key!r}")
    value = data[key]
    if kind is float:
        kind = (int, float)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in ((int, float), int)):
        expected = what or (kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind))
        raise UserError(f"{record.where}: field {key!r} should be {expected}, got {type(value).__name__}")
    return value


def text_list(record: Record, key: str, length: int | None = None) -> list[str]:
    value = need(record, key, list, "a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise UserError(f"{record.where}: field {key!r} should be a list of strings")
    if length is not None and len(value) != length:
        raise UserError(f"{record.where}: field {key!r} should hold {length} responses, got {len(value)}")
    return value


def messages(record: Record, value: Any, key: str) -> list[dict]:
    """A conversation as [{role, content}] (extra keys such as RMB's `language` dropped)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise UserError(f"{record.where}: field {key!r} should be a string or a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise UserError(f"{record.where}: field {key!r} message {i} is not a {{role: system|user|assistant, content: str}} mapping")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def records_for(bcfg: Mapping, benchmark: str) -> list[Record]:
    """All records of a single-dataset benchmark: its `path` as a file, a directory (only files whose name contains `prefer`,
    when any does) or a hub id loaded with its `split` (and `hub_name` / `hub_data_files` where the hub layout needs them)."""
    where = locate(bcfg.get("path"), benchmark)
    if isinstance(where, str):
        return read_hub(where, benchmark, split=bcfg.get("split"), name=bcfg.get("hub_name"), data_files=bcfg.get("hub_data_files"))
    files = [where] if where.is_file() else data_files(where, benchmark, prefer=bcfg.get("prefer"))
    records: list[Record] = []
    for f in files:
        records.extend(read_local(f))
    return records
