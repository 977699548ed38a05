"""`worldpm collect`: forum dumps and preference sets -> PairRecord shards (and, with output.threads, ThreadRecord shards),
every input row accounted for.

The job is a list of blocks (data_prep.blocks: readers -> filters -> writers, each counting what it kept and dropped, with a
reason) run in three phases (data_prep.pipeline):

  phase 1, one task per input (site or file), in parallel:  read the dump tables -> row checks -> on-disk store (SQLite)
  phase 2, one task per id range of each store, in parallel: group replies under threads -> HTML to markdown -> contamination
                                                             audit -> length bounds -> pairing (seeded from the thread) -> MinHash
  phase 3, one process, in canonical order (site, thread id): near-duplicate threads -> exact pair dedup -> thread-hash split ->
                                                             train/test shards, stats.json, rejects.jsonl, manifest.json (last)

A preference set (data_prep.preference_sets: HelpSteer2, UltraFeedback, Skywork, RLHFlow, SHP, HH-RLHF, TRL's formats) runs the
same phases: phase 1 reads each file's records into a store, the stores are merged with one thread per distinct prompt, phase 2
pairs (or takes the set's pairs) per prompt, phase 3 is unchanged except that the split hashes the prompt alone, or keeps the
set's own split labels (source.use_source_split).

The tasks of phases 1 and 2 depend only on the data (`partitions` id ranges per store, not `workers`), and phase 3 reads their
results in a fixed order, so the output is identical for any number of workers.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf

from data_prep.accounting import Stats, account
from data_prep.blocks import (ContaminationFilter, ExactDedup, FlaggedPairs, InputHash, LengthFilter, MinHashSignature,
                              NearDuplicateFilter, Pairing, PreferenceFileReader, RedditFileReader, ShardOutput, SiteReader,
                              ThreadPairsReader, ThreadPairsWriter, ThreadReader, ThreadSplit)
from data_prep.entry import check, hydra_entry
from data_prep.errors import CollectError
from data_prep.pipeline import Block, describe, run_blocks, run_phase, shared
from data_prep.preference_sets import SETS
from data_prep.records import clear_output_dir, write_json_atomic, write_jsonl_atomic

log = logging.getLogger("worldpm.collect")

OUTPUT_NAMES = ("train", "test", "threads", "stats.json", "rejects.jsonl", "manifest.json", ".work")
# stats.json and manifest.json; rejects.jsonl has the same but one sample per line
JSON_FORMAT = {"indent": 2, "ensure_ascii": False, "default": str}


# ------------------------------------------------------------------------------------------------------------------ tasks
def _read_task(task: tuple[Block, int]) -> dict:
    """Phase 1: one reader (a site, a file, or an input's hash) on its own."""
    reader, max_rejects = task
    stats = run_blocks([reader], max_rejects)
    return {**reader.result, "stats": stats.state()}


def _pair_task(task: tuple[ThreadReader, ThreadPairsWriter, int]) -> dict:
    """Phase 2: one id range, reader -> the phase's blocks (sent once per worker: they hold the contamination index) -> writer."""
    reader, writer, max_rejects = task
    stats = run_blocks([reader, *shared(), writer], max_rejects)
    return {"out": writer.path, "threads": reader.threads, "records": writer.written, "stats": stats.state()}


def _write_task(task: tuple[list[Block], int]) -> dict:
    blocks, max_rejects = task
    return {"stats": run_blocks(blocks, max_rejects).state()}


def _write_output(blocks: list[Block], stats: Stats, max_rejects: int) -> dict:
    """Phase 3: one task, in this process. Returns its timing."""
    return run_phase("collect: dedup + split + write", _write_task, [(blocks, max_rejects)], 1, stats, unit="thread")[1]


def _readers(source: str, found, work: Path, scfg: SimpleNamespace, stats: Stats) -> tuple[list[Block], int | None]:
    """Phase 1's readers, one per site (Stack Exchange) or file (Reddit), and the bytes they will read when known."""
    if source == "stackexchange":
        for site in found:
            log.info("site %s: tables %s%s", site.site, ", ".join(f"{t}={s.label}" for t, s in site.tables.items()),
                     f"; ignored members {site.ignored_members}" if site.ignored_members else "")
            stats.add("archive_members", "ignored", len(site.ignored_members))
        total = sum((s.tables[t].size or 0) for s in found for t in s.tables
                    if t == "Posts" or (t == "Users" and scfg.read_users) or (t == "Votes" and scfg.read_votes))
        return [SiteReader(s, str(work / f"site-{i:04d}.sqlite"), scfg) for i, s in enumerate(found)], total
    if source == "reddit":
        subs, coms = found
        return [RedditFileReader(str(f), "submissions" if f in subs else "comments", str(work / f"file-{i:04d}.sqlite"), scfg)
                for i, f in enumerate(subs + coms)], None
    log.info("%s: %d input%s: %s", source, len(found), "s" * (len(found) != 1), ", ".join(f.path for f in found[:8]))
    return [PreferenceFileReader(source, f, str(work / f"records-{i:04d}.sqlite"), scfg) for i, f in enumerate(found)], None


def _stores(source: str, found, results: list[dict], work: Path, stats: Stats) -> list[dict]:
    """The stores phase 1 wrote (Reddit's per-file stores merged into one, in file order)."""
    if source == "stackexchange":
        return [{"site": site.site, "db": r["db"], "label": site.tables["Posts"].label, "db_bytes": r["db_bytes"]}
                for site, r in zip(found, results)]
    if source == "reddit":
        from data_prep.reddit import merge_stores

        db = work / "reddit.sqlite"
        merge_stores([r for r in results if "kind" in r], db, stats)
    else:
        from data_prep.preference_sets import merge_stores

        db = work / "prompts.sqlite"
        n = merge_stores([r for r in results if "db" in r], db)
        log.info("%s: %d distinct prompts", source, n)
    return [{"site": None, "db": str(db), "label": None, "db_bytes": db.stat().st_size}]


def _id_ranges(source: str, stores: list[dict], partitions: int, work: Path,
               scfg: SimpleNamespace) -> list[tuple[ThreadReader, ThreadPairsWriter]]:
    """Phase 2's tasks: `partitions` id ranges of each store (fixed by the data), each with its reader and its output file."""
    from data_prep.store import partition_bounds

    ranges = []
    thread_table = {"stackexchange": "questions", "reddit": "posts"}.get(source, "threads")
    for u, store in enumerate(stores):
        for p, (lo, hi) in enumerate(partition_bounds(Path(store["db"]), thread_table, partitions)):
            ranges.append((ThreadReader(source, store["db"], lo, hi, scfg, store["site"], store["label"]),
                           ThreadPairsWriter(str(work / f"pairs-{u:04d}-{p:04d}.pkl.zst"))))
    return ranges


# ------------------------------------------------------------------------------------------------------------------ driver
def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a completed output unless told to overwrite; clear what an earlier (failed or replaced) run left."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CollectError(f"output_dir={out_dir} is a file")
    if (out_dir / "manifest.json").exists() and not overwrite:
        raise CollectError(f"output_dir={out_dir} holds a completed collection (manifest.json); pass overwrite=true to replace it")
    clear_output_dir(out_dir, OUTPUT_NAMES)  # manifest.json first: from there on the directory is not complete


# what source=synthetic reads besides its own source.* keys; every other collect key belongs to the forum pipeline
SYNTHETIC_READS = ("output_dir", "overwrite", "split.test_fraction")


def _leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_synthetic_keys(cfg: DictConfig) -> None:
    """source=synthetic generates its pairs itself, in one process: a collect key it would ignore (pairs.*, dedup.*, workers,
    ...) set to anything but its default is refused in one line, rather than silently doing nothing."""
    from data_prep.entry import config_dir

    defaults = OmegaConf.to_container(OmegaConf.load(config_dir() / "collect.yaml"))
    given = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for node in (defaults, given):
        for key in ("defaults", "hydra", "source"):
            node.pop(key, None)
    base = _leaves(defaults)
    ignored = [f"{key}={value}" for key, value in _leaves(given).items()
               if key not in SYNTHETIC_READS and (key not in base or value != base[key])]
    if ignored:
        hint = " (use source.max_rows_per_shard)" if "output.max_rows_per_shard" in " ".join(ignored) else ""
        raise CollectError(f"source=synthetic does not read {', '.join(ignored)}{hint}: it generates pairs without the forum "
                           f"pipeline and reads only {', '.join(SYNTHETIC_READS)} and source.*; leave the others at their defaults")


def run_synthetic(cfg: DictConfig) -> dict:
    """source=synthetic: the ground-truth generator (data_prep/synthetic.py) instead of a forum dump, same output layout."""
    from data_prep.nested import NestedDataError
    from data_prep.synthetic import SyntheticDataError, write_synthetic_dataset

    _check_synthetic_keys(cfg)
    options = {k: v for k, v in OmegaConf.to_container(cfg.source, resolve=True).items() if k not in ("name", "path")}
    try:
        manifest = write_synthetic_dataset(str(cfg.output_dir), test_fraction=float(cfg.split.test_fraction),
                                           overwrite=bool(cfg.overwrite), **options)
    except (SyntheticDataError, NestedDataError) as exc:
        raise CollectError(f"source=synthetic: {exc}") from None
    counts = {split: block["n"] for split, block in manifest["bayes"].items()}
    log.info("synthetic: wrote %s (%s pairs); Bayes-optimal test BT loss %.4f", cfg.output_dir, counts, manifest["bayes_bt_loss"])
    return manifest


def _discover(cfg: DictConfig) -> tuple:
    """The inputs (Stack Exchange sites, or Reddit's submission and comment files) and every input file, for the hashes."""
    from data_prep.inputs import discover_reddit, discover_stackexchange

    path = Path(str(cfg.source.path))
    if cfg.source.name == "stackexchange":
        sites = discover_stackexchange(path, cfg.source.site)
        return sites, sorted({str(f) for s in sites for f in s.files})
    if cfg.source.name == "reddit":
        subs, coms = discover_reddit(path)
        return (subs, coms), [str(f) for f in subs + coms]
    from data_prep.preference_sets import discover

    files = discover(str(cfg.source.path), cfg.source.name, cfg.source)
    return files, [f.path for f in files if not f.hub]


def _work_dir(cfg: DictConfig, out_dir: Path) -> Path:
    if cfg.work_dir:  # a fresh directory inside it: never delete what a user already keeps there
        Path(str(cfg.work_dir)).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="worldpm-collect-", dir=str(cfg.work_dir)))
    work = out_dir / ".work"
    work.mkdir(parents=True)
    return work


def _block_configs(cfg: DictConfig) -> tuple[SimpleNamespace, SimpleNamespace]:
    """source.* and pairs.* as the readers and the pairing read them, with the settings that depend on each other resolved."""
    src = OmegaConf.to_container(cfg.source, resolve=True)
    src["read_votes"] = bool(src.get("read_votes")) or cfg.pairs.score_rule == "stackllama_votes"
    pairs = OmegaConf.to_container(cfg.pairs, resolve=True)
    for key in ("order_rule", "max_per_question", "min_score_gap"):  # auto: what the source's config says
        if pairs[key] == "auto":
            pairs[key] = src.get(key)
    src["score_rule"] = pairs["score_rule"]  # the store's cheap "can this thread pair at all" test depends on it
    return SimpleNamespace(**src), SimpleNamespace(**pairs)


def _use_source_split(cfg: DictConfig, stats: Stats) -> bool:
    """A preference set's own split is kept when asked for and when it has a test side at all (a set published as one train
    split is split by a hash of the prompt instead)."""
    if cfg.source.name not in SETS or not cfg.source.get("use_source_split"):
        return False
    use = stats.counts.get("source_split", {}).get("test", 0) > 0
    log.info("split: %s", "the set's own train/test labels (a prompt labelled both goes to test)" if use else
             f"no test labels in the set: a hash of the prompt, split.test_fraction={cfg.split.test_fraction}")
    return use


def run(cfg: DictConfig) -> dict:
    t_start = time.perf_counter()
    cfg = check("collect", cfg, CollectError)  # types, ranges and paths: one line, before any work
    if cfg.source.name == "synthetic":
        return run_synthetic(cfg)
    from data_prep.contamination import NgramIndex

    source, out_dir = cfg.source.name, Path(str(cfg.output_dir))
    found, input_files = _discover(cfg)
    index = NgramIndex.from_files(list(cfg.contamination.benchmarks or []), int(cfg.contamination.ngram),
                                  int(cfg.contamination.min_words))
    created = not out_dir.exists()
    _prepare_output(out_dir, bool(cfg.overwrite))
    work = _work_dir(cfg, out_dir)
    try:
        return _collect(cfg, source, out_dir, found, input_files, index, work, t_start)
    except BaseException:  # a failure (or Ctrl-C) leaves no scratch and no shards without a manifest behind
        if cfg.keep_work:
            log.warning("collect failed; its scratch stores are kept in %s (keep_work=true); they cannot be resumed from", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        clear_output_dir(out_dir, OUTPUT_NAMES)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _collect(cfg: DictConfig, source: str, out_dir: Path, found, input_files: list[str], index, work: Path,
             t_start: float) -> dict:
    scfg, pcfg = _block_configs(cfg)
    ccfg, near = cfg.contamination, cfg.dedup.near
    workers, max_rejects = int(cfg.workers), int(cfg.rejects.max_per_reason)
    stats, timings = Stats(max_rejects), {}

    # phase 1, one task per input (site or file), in parallel: dump tables -> row checks -> on-disk store; input files hashed
    readers, total = _readers(source, found, work, scfg, stats)
    log.info("phase 1: reading %d %s into on-disk stores in %s (%d workers)", len(readers),
             "sites" if source == "stackexchange" else "files", work, workers)
    tasks = [(r, max_rejects) for r in readers + [InputHash(f) for f in input_files]]
    results, timings["read"] = run_phase("collect: read", _read_task, tasks, workers, stats, total_bytes=total or None)
    inputs = [{"path": r["path"], "bytes": r["bytes"], "sha256": r["sha256"]} for r in results if "sha256" in r]
    stores = _stores(source, found, results, work, stats)

    # phase 2, one task per id range of each store, in parallel: threads -> contamination -> length -> pairing -> MinHash
    pair_job = [ContaminationFilter(index, ccfg.mode, bool(ccfg.check_replies)),
                LengthFilter(pcfg.min_reply_chars, pcfg.max_reply_chars),
                Pairing(pcfg, threads=bool(cfg.output.threads)),
                FlaggedPairs(bool(index) and ccfg.mode == "flag"),
                MinHashSignature(bool(near.enabled), near.num_perm, near.shingle_words)]
    ranges = _id_ranges(source, stores, int(cfg.partitions), work, scfg)
    log.info("phase 1 done in %.1fs: %s; phase 2 in %d id ranges: %s", timings["read"]["seconds"],
             ", ".join(f"{t} {v['read']:,} rows" for t, v in account(stats, source)["rows"].items()), len(ranges),
             describe(pair_job))
    results, timings["pair"] = run_phase("collect: pair", _pair_task, [(r, w, max_rejects) for r, w in ranges], workers, stats,
                                         unit="thread", shared=pair_job)

    # phase 3, one process, in canonical order (site, thread id): near-duplicate threads -> exact pair dedup -> split -> shards
    output = ShardOutput(out_dir, cfg.output.max_rows_per_shard, threads=bool(cfg.output.threads))
    write_job = [ThreadPairsReader([r["out"] for r in results]),
                 NearDuplicateFilter(bool(near.enabled), work / "near.sqlite", near.num_perm, near.threshold),
                 ExactDedup(bool(cfg.dedup.exact), work / "exact.sqlite"),
                 ThreadSplit(cfg.split.test_fraction, cfg.split.salt, by_prompt=source in SETS,
                             use_source_split=_use_source_split(cfg, stats)),
                 output]
    log.info("phase 2 done in %.1fs: %d threads with pairs; phase 3: %s", timings["pair"]["seconds"],
             sum(r["records"] for r in results), describe(write_job))
    timings["write"] = _write_output(write_job, stats, max_rejects)

    summary = account(stats, source)
    if index:
        summary["contamination_benchmarks"] = index.summary()
    summary["store_bytes"] = store_bytes = sum(s["db_bytes"] for s in stores)
    if not summary["all_accounted"]:
        bad = [k for k, ok in summary["identities"].items() if not ok]
        raise RuntimeError(f"collect bug: counts do not add up: {bad}")  # not the user's fault: a traceback is right here
    write_json_atomic(out_dir / "stats.json", summary, **JSON_FORMAT)
    write_jsonl_atomic(out_dir / "rejects.jsonl", stats.reject_samples(), ensure_ascii=False, default=str)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "complete": True, "format": "worldpm PairRecord shards", "source": source, "inputs": inputs,
        "shards": output.shards, "counts": {"train": summary["output"]["train"], "test": summary["output"]["test"],
                                            "threads": summary["threads_out"]["written"],
                                            "rows_read": {t: v["read"] for t, v in summary["rows"].items()},
                                            **{k: summary[k] for k in ("thread_shards",) if k in summary}},
        "config": OmegaConf.to_container(cfg, resolve=True), "timings": timings,
        "seconds": round(time.perf_counter() - t_start, 3), "store_bytes": store_bytes,
    }
    write_json_atomic(out_dir / "manifest.json", manifest, **JSON_FORMAT)  # last: its presence marks the output complete
    log.info("collect: %d train + %d test pairs from %d threads -> %s (%.1fs)", manifest["counts"]["train"],
             manifest["counts"]["test"], manifest["counts"]["threads"], out_dir, manifest["seconds"])
    return manifest


main = hydra_entry("collect")(run)

if __name__ == "__main__":
    main()
