"""Nested data sizes: datasets holding the first n train pairs of one larger PairRecord dataset, all with its test split.

Data-size scaling with separate runs per size needs subsets that are nested (the 10k-pair run saw every pair the 1k-pair
run saw) and share one test set, so that losses differ only by how much was learnt. Each subset is a dataset directory
of its own (train/, test/, stats.json, manifest.json written last), usable as `data.path`:

    python -m data_prep.nested input=data/forum sizes=[1000,10000] output_dir=data/forum-nested   # configs/nested.yaml
    # -> data/forum-nested/n-1000/, data/forum-nested/n-10000/

"First n" is in shard order (part-00000 first), which for source=synthetic is generation order. Keep subsets outside the
parent directory: a loader globbing `**/train/*` under the parent would otherwise read them as more training data.
Pure pyarrow: no torch, no worldpm.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from data_prep.entry import check, hydra_entry
from data_prep.errors import InputError
from data_prep.records import PAIR_SCHEMA, ShardWriter, clear_output_dir, write_json_atomic

# stats.json and manifest.json of nested subsets and of source=synthetic
JSON_FORMAT = {"indent": 2, "sort_keys": True}


class NestedDataError(InputError):
    """Bad input to the subset writer; shown to the user as one line."""


def subset_dir(output_root: str | os.PathLike, n: int) -> Path:
    return Path(output_root) / f"n-{n}"


def _count_rows(files: Sequence[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """An empty dataset directory; an existing non-empty one only with overwrite (its manifest goes first)."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise NestedDataError(f"output directory {out} exists and is not empty (pass overwrite=true to replace it)")
    clear_output_dir(out, ("train", "test", "stats.json"))  # manifest.json first: a half-rewritten one must not look complete


def write_nested_subsets(dataset_dir: str | os.PathLike, sizes: Sequence[int], output_root: str | os.PathLike,
                         overwrite: bool = False, max_rows_per_shard: int = 50_000) -> list[Path]:
    """Write `output_root/n-{n}` for each n in `sizes`: the first n train pairs of `dataset_dir` and all of its test pairs.

    The parent must be complete (manifest.json). Returns the subset directories, smallest first."""
    src = Path(dataset_dir)
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise NestedDataError(f"{src} is not a complete dataset (no manifest.json)")
    parent_manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    train_files = sorted((src / "train").glob("*.parquet"))
    test_files = sorted((src / "test").glob("*.parquet"))
    if not train_files:
        raise NestedDataError(f"{src}/train has no parquet shards")
    n_train = _count_rows(train_files)
    n_test = _count_rows(test_files)
    bad = [n for n in sizes if isinstance(n, bool) or not isinstance(n, int)]
    if bad:
        raise NestedDataError(f"sizes: {bad[0]!r} is not a whole number of pairs")
    sizes = sorted(set(sizes))
    if not sizes:
        raise NestedDataError("sizes: give at least one subset size")
    for n in sizes:
        if n <= 0 or n > n_train:
            raise NestedDataError(f"sizes: {n} is not between 1 and the {n_train} train pairs of {src}")
    root = Path(output_root)
    if root.resolve() == src.resolve() or src.resolve() in root.resolve().parents:
        raise NestedDataError(f"output_dir {root} is inside the parent dataset {src}; put subsets beside it")

    written = []
    for n in sizes:
        out = subset_dir(root, n)
        prepare_output_dir(out, overwrite)
        with ShardWriter(out / "train", max_rows_per_shard) as writer:
            left = n
            for f in train_files:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=min(left, 5_000), columns=list(PAIR_SCHEMA.names)):
                    rows = batch.to_pylist()[:left]
                    for row in rows:
                        writer.write(row)
                    left -= len(rows)
                    if left == 0:
                        break
                if left == 0:
                    break
        (out / "test").mkdir(exist_ok=True)
        for f in test_files:
            tmp = out / "test" / f".{f.name}.tmp"
            shutil.copyfile(f, tmp)
            tmp.replace(out / "test" / f.name)
        stats = {"parent": str(src), "input": {"train_pairs": n_train, "test_pairs": n_test},
                 "kept": {"train": n, "test": n_test}, "dropped": {"train_beyond_first_n": n_train - n}}
        write_json_atomic(out / "stats.json", stats, **JSON_FORMAT)
        manifest = {k: v for k, v in parent_manifest.items() if k not in ("splits", "bayes", "complete")}
        # The test split is the parent's, byte for byte: facts about it (e.g. a known Bayes loss) carry over.
        if "bayes" in parent_manifest:
            manifest["bayes"] = {"test": parent_manifest["bayes"].get("test")}
        manifest.update(nested={"parent": str(src), "train_pairs": n, "parent_train_pairs": n_train, "order": "first n in shard order"},
                        splits={"train": {"pairs": n, "shards": [p.name for p in sorted((out / "train").glob("*.parquet"))]},
                                "test": {"pairs": n_test, "shards": [f.name for f in test_files]}},
                        complete=True)
        write_json_atomic(out / "manifest.json", manifest, **JSON_FORMAT)
        written.append(out)
    return written


def run(cfg: DictConfig) -> list[Path]:
    """`python -m data_prep.nested input=DIR sizes=[n,...] output_dir=DIR [overwrite=true]` (configs/nested.yaml): prints each
    subset directory written."""
    cfg = check("nested", cfg, NestedDataError)  # types and paths: one line, before any work
    sizes = OmegaConf.to_container(cfg.sizes) if OmegaConf.is_list(cfg.sizes) else [cfg.sizes]
    try:
        written = write_nested_subsets(str(cfg.input), sizes, str(cfg.output_dir), overwrite=bool(cfg.overwrite))
    except OSError as exc:  # an unreadable input or unwritable output_dir: the user's to fix, one line
        raise NestedDataError(str(exc)) from None
    for out in written:
        print(out)
    return written


main = hydra_entry("nested")(run)

if __name__ == "__main__":
    main()
