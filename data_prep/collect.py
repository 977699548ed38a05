"""`worldpm collect`: forum dumps -> PairRecord shards, every input row accounted for.

Pipeline (readers -> filters -> writers; each block counts what it kept and dropped, with a reason):

  phase 1, one task per input (site or file), in parallel:  read the dump tables -> row checks -> on-disk store (SQLite)
  phase 2, one task per id range of each store, in parallel: group replies under threads -> HTML to markdown -> contamination
                                                             audit -> length bounds -> pairing (seeded from the thread) -> MinHash
  phase 3, one process, in canonical order (site, thread id): near-duplicate threads -> exact pair dedup -> thread-hash split ->
                                                             train/test shards, stats.json, rejects.jsonl, manifest.json (last)

The tasks of phases 1 and 2 depend only on the data (`partitions` id ranges per store, not `workers`), and phase 3 reads their
results in a fixed order, so the output is identical for any number of workers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import pickle
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf

from data_prep.accounting import Stats
from data_prep.entry import hydra_entry
from data_prep.errors import CollectError
from data_prep.records import ShardWriter, clear_output_dir, write_json_atomic, write_jsonl_atomic

log = logging.getLogger("worldpm.collect")

OUTPUT_NAMES = ("train", "test", "stats.json", "rejects.jsonl", "manifest.json", ".work")
# stats.json and manifest.json; rejects.jsonl has the same but one sample per line
JSON_FORMAT = {"indent": 2, "ensure_ascii": False, "default": str}
SOURCES = ("stackexchange", "reddit")
KEPT_ROWS = {"question", "answer", "user", "vote", "submission", "comment"}


# ------------------------------------------------------------------------------------------------------------------ progress
class _Bar:
    """A tqdm bar in MB/s with rows/s beside it, fed by this process or by workers through a queue."""

    def __init__(self, desc: str, total_bytes: int | None, unit: str = "B"):
        from tqdm import tqdm

        self.bar = tqdm(total=total_bytes, desc=desc, unit=unit, unit_scale=True, unit_divisor=1000, mininterval=1.0,
                        dynamic_ncols=True, file=sys.stderr, disable=None)
        self.rows, self.bytes, self.t0, self.unit = 0, 0, time.perf_counter(), unit
        self.shown = 0.0  # when the rows/s postfix was last formatted

    def update(self, nbytes: int, nrows: int) -> None:
        self.bar.update(nbytes)
        self.bytes += nbytes
        self.rows += nrows
        if nrows:
            now = time.perf_counter()
            if now - self.shown >= 0.5:  # called once per thread in phases 2 and 3: format the postfix twice a second at most
                self.shown = now
                self.bar.set_postfix_str(f"{self.rows:,} rows, {self.rows / max(now - self.t0, 1e-9):,.0f} rows/s",
                                         refresh=False)

    def close(self) -> dict:
        seconds = time.perf_counter() - self.t0
        self.bar.close()
        return {"seconds": round(seconds, 3), "bytes": self.bytes, "rows": self.rows, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """Peak RSS so far of this process and of its largest finished worker (Linux reports KiB)."""
    import resource

    return round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)


_WORKER: dict = {}


def _init_worker(queue, index) -> None:
    _WORKER.update(queue=queue, index=index)


def _progress_fn():
    """Progress callback for a task: direct in-process, batched through the queue in a worker."""
    queue = _WORKER.get("queue")
    bar = _WORKER.get("bar")
    if queue is None:
        return bar.update if bar is not None else (lambda b, r: None)
    acc = [0, 0]

    def send(nbytes: int, nrows: int) -> None:
        acc[0] += nbytes
        acc[1] += nrows
        if acc[0] >= 4 << 20 or acc[1] >= 20_000:
            queue.put((acc[0], acc[1]))
            acc[0] = acc[1] = 0

    send.flush = lambda: (queue.put((acc[0], acc[1])) if acc[0] or acc[1] else None)
    return send


def _run_tasks(fn, tasks: list, workers: int, bar: _Bar, index=None) -> list:
    """Run `fn(task)` for every task, results in task order; in-process for one worker, else a process pool."""
    if workers <= 1 or len(tasks) <= 1:
        _WORKER.update(queue=None, bar=bar, index=index)
        return [fn(t) for t in tasks]
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue = ctx.Queue()

    def listen():
        while (item := queue.get()) is not None:
            bar.update(*item)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(queue, index)) as pool:
            return list(pool.imap(fn, tasks))
    finally:
        queue.put(None)
        listener.join(5)


# ------------------------------------------------------------------------------------------------------------------ phase 1
def _ingest_task(task: dict) -> dict:
    from data_prep import reddit, stackexchange

    cfg = task["cfg"]
    stats = Stats(cfg["max_rejects"])
    progress = _progress_fn()
    scfg = SimpleNamespace(**cfg["source"])
    if task["kind"] == "hash":
        from data_prep.inputs import sha256_file

        path = Path(task["path"])
        result = {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    elif task["kind"] == "site":
        result = stackexchange.ingest_site(task["site"], Path(task["db"]), scfg, stats, progress)
    else:
        result = reddit.ingest_file(Path(task["path"]), task["kind"], Path(task["db"]), scfg, stats, progress)
    getattr(progress, "flush", lambda: None)()
    return {**result, "stats": stats.state()}


# ------------------------------------------------------------------------------------------------------------------ phase 2
def _process_thread(thread, pcfg, ccfg, ncfg, index, stats):
    """Contamination audit, length bounds, pairing and MinHash for one thread; None if the thread yields no pair."""
    from data_prep.near_dedup import signature
    from data_prep.pairing import make_pairs, usable_replies

    flags = []
    if index:
        if index.overlaps(thread.prompt):
            if ccfg.mode == "drop":
                stats.drop("questions", "contaminated_prompt", thread.position)
                stats.add("replies", "question_dropped", len(thread.replies))
                return None
            thread.meta["contaminated_prompt"] = True
            flags.append("prompt")
        if ccfg.check_replies:
            kept = []
            for reply in thread.replies:
                if index.overlaps(reply.text):
                    if ccfg.mode == "drop":
                        stats.drop("replies", "contaminated", {**thread.position, "id": reply.id})
                        continue
                    reply.meta["contaminated"] = True
                    if "replies" not in flags:
                        flags.append("replies")
                kept.append(reply)
            thread.replies = kept
    usable = usable_replies(thread, pcfg, stats)
    stats.add("replies", "usable", len(usable))
    stats.add("pairs_possible", "total", len(usable) * (len(usable) - 1) // 2)
    if len(usable) < 2:
        stats.drop("questions", "fewer_than_2_usable_replies", thread.position)
        return None
    rows = make_pairs(thread, usable, pcfg, stats)
    if not rows:
        stats.drop("questions", "no_pair_after_rules", thread.position)
        return None
    stats.add("questions", "paired")
    flagged = []
    if "prompt" in flags:  # flags are set only in mode flag
        flagged = [r["id"] for r in rows]
    elif flags:  # some replies flagged: which pairs hold one is in the meta just written (rare: parsed only here)
        for r in rows:
            meta = json.loads(r["meta"])
            if meta["chosen"].get("contaminated") or meta["rejected"].get("contaminated"):
                flagged.append(r["id"])
    stats.add("contamination", "flagged_pairs_sampled", len(flagged))
    sig = signature(thread.prompt, int(ncfg.num_perm), int(ncfg.shingle_words)) if ncfg.enabled else None
    return {"source": thread.source, "domain": thread.domain, "thread_id": thread.thread_id, "rows": rows, "sig": sig,
            "flagged": flagged}


def _pair_task(task: dict) -> dict:
    import zstandard

    from data_prep import reddit, stackexchange

    cfg = task["cfg"]
    stats = Stats(cfg["max_rejects"])
    scfg, pcfg = SimpleNamespace(**cfg["source"]), SimpleNamespace(**cfg["pairs"])
    ccfg, ncfg = SimpleNamespace(**cfg["contamination"]), SimpleNamespace(**cfg["near"])
    index = _WORKER.get("index")
    progress = _progress_fn()
    if task["source"] == "stackexchange":
        threads = stackexchange.site_threads(task["site"], Path(task["db"]), task["label"], task["lo"], task["hi"], scfg, stats)
    else:
        threads = reddit.reddit_threads(Path(task["db"]), task["lo"], task["hi"], scfg, stats)
    n_threads = n_records = 0
    with open(task["out"], "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as out:
        for thread in threads:
            n_threads += 1
            record = _process_thread(thread, pcfg, ccfg, ncfg, index, stats)
            if record is not None:
                pickle.dump(record, out, protocol=pickle.HIGHEST_PROTOCOL)
                n_records += 1
            progress(0, 1)
    getattr(progress, "flush", lambda: None)()
    return {"out": task["out"], "threads": n_threads, "records": n_records, "stats": stats.state()}


def _records(path: str):
    import zstandard

    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
        while True:
            try:
                yield pickle.load(reader)
            except EOFError:
                return


# ------------------------------------------------------------------------------------------------------------------ phase 3
def split_of(source: str, domain: str, thread_id: str, test_fraction: float, salt: str = "") -> str:
    """Deterministic thread-hash split: a thread's pairs all land on one side, whatever else is in the run."""
    from data_prep.pairing import thread_seed

    return "test" if thread_seed(salt, source, domain, thread_id) / 2**64 < test_fraction else "train"


def _pair_key(row: dict) -> bytes:
    text = "\x1f".join([m["content"] for m in row["prompt"]] + [row["chosen"], row["rejected"]])
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def _write_output(record_files: list[str], out_dir: Path, work: Path, cfg: DictConfig, stats: Stats) -> dict:
    from data_prep.near_dedup import ExactPairIndex, NearDuplicateIndex

    near = NearDuplicateIndex(work / "near.sqlite", int(cfg.dedup.near.num_perm), float(cfg.dedup.near.threshold)) \
        if cfg.dedup.near.enabled else None
    exact = ExactPairIndex(work / "exact.sqlite") if cfg.dedup.exact else None
    fraction, salt = float(cfg.split.test_fraction), str(cfg.split.salt)
    bar = _Bar("collect: dedup + split + write", None, unit="thread")
    shard_rows = int(cfg.output.max_rows_per_shard)
    try:
        with ShardWriter(out_dir / "train", shard_rows) as train, ShardWriter(out_dir / "test", shard_rows) as test:
            writers = {"train": train, "test": test}
            for path in record_files:
                for rec in _records(path):
                    bar.update(0, 1)
                    if near is not None and near.seen(rec["sig"]):
                        stats.drop("threads_out", "near_duplicate", {"id": rec["thread_id"], "domain": rec["domain"]})
                        stats.drop("output", "near_duplicate_thread", None, len(rec["rows"]))
                        continue
                    side = split_of(rec["source"], rec["domain"], rec["thread_id"], fraction, salt)
                    written = 0
                    for row in rec["rows"]:
                        if exact is not None and exact.seen(_pair_key(row)):
                            stats.drop("output", "exact_duplicate", {"id": row["id"], "thread_id": rec["thread_id"]})
                            continue
                        writers[side].write(row)
                        stats.add("output", side)
                        if row["id"] in rec["flagged"]:
                            stats.add("contamination", f"flagged_pairs_{side}")
                        written += 1
                    if written:
                        stats.add("threads_out", "written")
                        stats.add("threads_out", f"written_{side}")
                    else:
                        stats.drop("threads_out", "all_pairs_exact_duplicate", {"id": rec["thread_id"], "domain": rec["domain"]})
    finally:
        bar.close()
        for index in (near, exact):
            if index is not None:
                index.close()
    return {name: [str(p.relative_to(out_dir)) for p in w.shards] for name, w in writers.items()}


# ------------------------------------------------------------------------------------------------------------------ accounting
def account(stats: Stats, source: str) -> dict:
    """stats.json: every count by block, and the identities that say every input row is accounted for."""
    c = stats.as_dict()
    out: dict = {"rows": {}}
    identities = {}
    for block, outcomes in c.items():
        if not block.startswith("rows."):
            continue
        table = block[5:]
        kept = {k: v for k, v in outcomes.items() if k in KEPT_ROWS}
        dropped = {k: v for k, v in outcomes.items() if k not in KEPT_ROWS and k != "read"}
        out["rows"][table] = {"read": outcomes.get("read", 0), **kept, "dropped": dropped}
        identities[f"rows.{table}: read = kept + dropped"] = outcomes.get("read", 0) == sum(kept.values()) + sum(dropped.values())
    question_rows, reply_rows = ("Posts", "question"), ("Posts", "answer")
    if source == "reddit":
        question_rows, reply_rows = ("submissions", "submission"), ("comments", "comment")

    def section(block, kept_name, total):
        outcomes = dict(c.get(block, {}))
        kept = {k: outcomes.pop(k) for k in list(outcomes) if k == kept_name or k.startswith(kept_name + "_")}
        out[block] = {"total": total, **kept, "dropped": outcomes}
        identities[f"{block}: total = {kept_name} + dropped"] = total == kept.get(kept_name, 0) + sum(outcomes.values())

    q_total = out["rows"].get(question_rows[0], {}).get(question_rows[1], 0)
    r_total = out["rows"].get(reply_rows[0], {}).get(reply_rows[1], 0)
    section("questions", "paired", q_total)
    section("replies", "usable", r_total)
    section("pairs", "sampled", c.get("pairs_possible", {}).get("total", 0))
    paired, sampled = out["questions"].get("paired", 0), out["pairs"].get("sampled", 0)
    outcomes = dict(c.get("output", {}))
    train, test = outcomes.pop("train", 0), outcomes.pop("test", 0)
    out["output"] = {"sampled": sampled, "train": train, "test": test, "dropped": outcomes}
    identities["output: sampled = train + test + dropped"] = sampled == train + test + sum(outcomes.values())
    outcomes = dict(c.get("threads_out", {}))
    written = outcomes.pop("written", 0)
    per_split = {k: outcomes.pop(k) for k in list(outcomes) if k.startswith("written_")}
    out["threads_out"] = {"paired": paired, "written": written, **per_split, "dropped": outcomes}
    identities["threads_out: paired = written + dropped"] = paired == written + sum(outcomes.values())
    if "contamination" in c:
        out["contamination"] = c["contamination"]
    out["identities"] = identities
    out["all_accounted"] = all(identities.values())
    return out


# ------------------------------------------------------------------------------------------------------------------ driver
def _validate(cfg: DictConfig) -> None:
    from data_prep.html_markdown import CONVERTERS
    from data_prep.pairing import SCORE_RULES

    if cfg.source.name not in SOURCES:
        raise CollectError(f"source={cfg.source.name} is not a forum source (choose from {', '.join(SOURCES)})")
    if not OmegaConf.is_missing(cfg, "output_dir") and not str(cfg.output_dir).strip():
        raise CollectError("output_dir is empty")
    if OmegaConf.is_missing(cfg.source, "path"):
        raise CollectError("source.path is required (a site .7z, a directory of them, an extracted site or a Posts.xml; "
                           "for reddit, RS_/RC_ .zst files or a directory of them)")
    if OmegaConf.is_missing(cfg, "output_dir"):
        raise CollectError("output_dir is required")
    checks = [
        (isinstance(cfg.workers, int) and cfg.workers >= 1, f"workers={cfg.workers} must be an integer >= 1"),
        (isinstance(cfg.partitions, int) and cfg.partitions >= 1, f"partitions={cfg.partitions} must be an integer >= 1"),
        (cfg.pairs.max_per_question is None or (isinstance(cfg.pairs.max_per_question, int) and cfg.pairs.max_per_question >= 1),
         f"pairs.max_per_question={cfg.pairs.max_per_question} must be an integer >= 1 or null"),
        (isinstance(cfg.split.test_fraction, (int, float)) and 0 <= cfg.split.test_fraction <= 1,
         f"split.test_fraction={cfg.split.test_fraction} must be between 0 and 1"),
        (cfg.pairs.score_rule in SCORE_RULES, f"pairs.score_rule={cfg.pairs.score_rule} (choose {', '.join(SCORE_RULES)})"),
        (isinstance(cfg.pairs.min_score_gap, (int, float)) and cfg.pairs.min_score_gap > 0,
         f"pairs.min_score_gap={cfg.pairs.min_score_gap} must be > 0"),
        (cfg.contamination.mode in ("drop", "flag"), f"contamination.mode={cfg.contamination.mode} (choose drop or flag)"),
        (cfg.pairs.order_rule in (None, "auto", "preferred_not_earlier"),
         f"pairs.order_rule={cfg.pairs.order_rule} (choose auto, null or preferred_not_earlier)"),
        (0 < float(cfg.dedup.near.threshold) <= 1, f"dedup.near.threshold={cfg.dedup.near.threshold} must be in (0, 1]"),
        (isinstance(cfg.output.max_rows_per_shard, int) and cfg.output.max_rows_per_shard >= 1,
         f"output.max_rows_per_shard={cfg.output.max_rows_per_shard} must be an integer >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise CollectError(message)
    if cfg.source.name == "stackexchange" and cfg.source.converter not in CONVERTERS:
        raise CollectError(f"source.converter={cfg.source.converter} (choose {' or '.join(CONVERTERS)})")
    if cfg.pairs.score_rule == "stackllama_votes" and cfg.source.name != "stackexchange":
        raise CollectError("pairs.score_rule=stackllama_votes needs Stack Exchange Votes.xml (source=stackexchange)")


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a completed output unless told to overwrite; clear what an earlier (failed or replaced) run left."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CollectError(f"output_dir={out_dir} is a file")
    if (out_dir / "manifest.json").exists() and not overwrite:
        raise CollectError(f"output_dir={out_dir} holds a completed collection (manifest.json); pass overwrite=true to replace it")
    clear_output_dir(out_dir, OUTPUT_NAMES)  # manifest.json first: from there on the directory is not complete


def run_synthetic(cfg: DictConfig) -> dict:
    """source=synthetic: the ground-truth generator (data_prep/synthetic.py) instead of a forum dump, same output layout."""
    from data_prep.nested import NestedDataError
    from data_prep.synthetic import SyntheticDataError, write_synthetic_dataset

    if OmegaConf.is_missing(cfg, "output_dir") or not str(cfg.output_dir).strip():
        raise CollectError("output_dir is required")
    options = {k: v for k, v in OmegaConf.to_container(cfg.source, resolve=True).items() if k not in ("name", "path")}
    try:
        manifest = write_synthetic_dataset(str(cfg.output_dir), test_fraction=float(cfg.split.test_fraction),
                                           overwrite=bool(cfg.overwrite), **options)
    except (SyntheticDataError, NestedDataError) as exc:
        raise CollectError(f"source=synthetic: {exc}") from None
    except TypeError as exc:  # an unknown source.* key
        raise CollectError(f"source=synthetic: {exc}") from None
    counts = {split: block["n"] for split, block in manifest["bayes"].items()}
    log.info("synthetic: wrote %s (%s pairs); Bayes-optimal test BT loss %.4f", cfg.output_dir, counts, manifest["bayes_bt_loss"])
    return manifest


def run(cfg: DictConfig) -> dict:
    t_start = time.perf_counter()
    if cfg.source.name == "synthetic":
        return run_synthetic(cfg)
    _validate(cfg)
    from data_prep.contamination import NgramIndex
    from data_prep.inputs import discover_reddit, discover_stackexchange

    source = cfg.source.name
    out_dir = Path(str(cfg.output_dir))
    src_path = Path(str(cfg.source.path))
    if source == "stackexchange":
        sites = discover_stackexchange(src_path, cfg.source.site)
        input_files = sorted({str(f) for s in sites for f in s.files})
    else:
        subs, coms = discover_reddit(src_path)
        input_files = [str(f) for f in subs + coms]
    index = NgramIndex.from_files(list(cfg.contamination.benchmarks or []), int(cfg.contamination.ngram),
                                  int(cfg.contamination.min_words))
    _prepare_output(out_dir, bool(cfg.overwrite))
    if cfg.work_dir:  # a fresh directory inside it: never delete what a user already keeps there
        Path(str(cfg.work_dir)).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="worldpm-collect-", dir=str(cfg.work_dir)))
    else:
        work = out_dir / ".work"
        work.mkdir(parents=True)
    src = OmegaConf.to_container(cfg.source, resolve=True)
    src["read_votes"] = bool(src.get("read_votes")) or cfg.pairs.score_rule == "stackllama_votes"
    pairs = {**OmegaConf.to_container(cfg.pairs, resolve=True)}
    if pairs["order_rule"] == "auto":
        pairs["order_rule"] = src.get("order_rule")
    src["score_rule"] = pairs["score_rule"]  # the store's cheap "can this thread pair at all" test depends on it
    task_cfg = {"source": src, "pairs": pairs, "contamination": OmegaConf.to_container(cfg.contamination, resolve=True),
                "near": OmegaConf.to_container(cfg.dedup.near, resolve=True), "max_rejects": int(cfg.rejects.max_per_reason)}
    workers = int(cfg.workers)
    stats = Stats(int(cfg.rejects.max_per_reason))
    timings = {}

    # phase 1: read every input into its store (one task per site or file), and hash the input files
    if source == "stackexchange":
        tasks = [{"kind": "site", "site": s, "db": str(work / f"site-{i:04d}.sqlite"), "cfg": task_cfg} for i, s in enumerate(sites)]
        for site in sites:
            log.info("site %s: tables %s%s", site.site, ", ".join(f"{t}={s.label}" for t, s in site.tables.items()),
                     f"; ignored members {site.ignored_members}" if site.ignored_members else "")
            stats.add("archive_members", "ignored", len(site.ignored_members))
        total = sum((s.tables[t].size or 0) for s in sites for t in s.tables
                    if t == "Posts" or (t == "Users" and src["read_users"]) or (t == "Votes" and src["read_votes"]))
    else:
        tasks = [{"kind": "submissions" if f in subs else "comments", "path": str(f), "db": str(work / f"file-{i:04d}.sqlite"),
                  "cfg": task_cfg} for i, f in enumerate(subs + coms)]
        total = None
    tasks += [{"kind": "hash", "path": f, "cfg": task_cfg} for f in input_files]
    log.info("phase 1: reading %d %s into on-disk stores in %s (%d workers)", len(tasks) - len(input_files),
             "sites" if source == "stackexchange" else "files", work, workers)
    bar = _Bar("collect: read", total or None)
    results = _run_tasks(_ingest_task, tasks, workers, bar)
    timings["read"] = bar.close()
    inputs = [{"path": r["path"], "bytes": r["bytes"], "sha256": r["sha256"]} for r in results if "sha256" in r]
    for r in results:
        stats.merge(Stats.from_state(r["stats"]))
    from data_prep.store import partition_bounds

    stores = []
    if source == "stackexchange":
        for site, r in zip(sites, results):
            stores.append({"site": site.site, "db": r["db"], "label": site.tables["Posts"].label, "db_bytes": r["db_bytes"]})
    else:
        from data_prep.reddit import merge_stores

        db = work / "reddit.sqlite"
        merge_stores([r for r in results if "kind" in r], db, stats)
        stores.append({"site": None, "db": str(db), "label": None, "db_bytes": db.stat().st_size})
    store_bytes = sum(s["db_bytes"] for s in stores)

    # phase 2: threads -> pairs, one task per id range of each store
    tasks = []
    thread_table = "questions" if source == "stackexchange" else "posts"
    for u, store in enumerate(stores):
        for p, (lo, hi) in enumerate(partition_bounds(Path(store["db"]), thread_table, int(cfg.partitions))):
            tasks.append({"source": source, "site": store["site"], "db": store["db"], "label": store["label"], "lo": lo, "hi": hi,
                          "out": str(work / f"pairs-{u:04d}-{p:04d}.pkl.zst"), "cfg": task_cfg})
    log.info("phase 1 done in %.1fs: %s; phase 2: grouping, converting and pairing in %d id ranges", timings["read"]["seconds"],
             ", ".join(f"{t} {v['read']:,} rows" for t, v in account(stats, source)["rows"].items()), len(tasks))
    bar = _Bar("collect: pair", None, unit="thread")
    results = _run_tasks(_pair_task, tasks, workers, bar, index if index else None)
    timings["pair"] = bar.close()
    log.info("phase 2 done in %.1fs: %d threads with pairs; phase 3: dedup, split and write", timings["pair"]["seconds"],
             sum(r["records"] for r in results))
    for r in results:
        stats.merge(Stats.from_state(r["stats"]))

    # phase 3: dedup, split and write in canonical order
    t0 = time.perf_counter()
    shards = _write_output([r["out"] for r in results], out_dir, work, cfg, stats)
    timings["write"] = {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": _peak_rss_mb()}
    summary = account(stats, source)
    if index:
        summary["contamination_benchmarks"] = index.summary()
    summary["store_bytes"] = store_bytes
    if not summary["all_accounted"]:
        bad = [k for k, ok in summary["identities"].items() if not ok]
        raise RuntimeError(f"collect bug: counts do not add up: {bad}")  # not the user's fault: a traceback is right here
    write_json_atomic(out_dir / "stats.json", summary, **JSON_FORMAT)
    write_jsonl_atomic(out_dir / "rejects.jsonl", stats.reject_samples(), ensure_ascii=False, default=str)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "complete": True, "format": "worldpm PairRecord shards", "source": source, "inputs": inputs,
        "shards": shards, "counts": {"train": summary["output"]["train"], "test": summary["output"]["test"],
                                     "threads": summary["threads_out"]["written"], "rows_read": {t: v["read"] for t, v in summary["rows"].items()}},
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
