"""Putting a fully written directory in place of another in one step, so readers see the old one or the new one, never half."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


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
