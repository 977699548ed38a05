"""Atomic writes: a file or directory is written under a temporary name beside its destination and renamed into place, so
readers see the old one or the new one, never half of one."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.records import atomic_path  # noqa: F401 (the one tmp-then-rename; imported from here by worldpm)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory `tmp` to `final`. An existing `final` is renamed aside first (a rename cannot replace a
    non-empty directory), then removed; between the two renames a crash leaves the old copy under `.{name}.old`."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars and arrays to Python, nan / inf to null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as strict JSON (jsonable: non-finite numbers become null), written atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
