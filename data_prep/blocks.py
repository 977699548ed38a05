"""The blocks of `worldpm collect` (data_prep.pipeline.Block), in job order. Each counts what it keeps and drops; the sections
it counts into are in its docstring (stats.json adds them up, data_prep.accounting).

  phase 1, one task per input:     SiteReader | RedditFileReader (dump -> row checks -> SQLite store)
                                   | PreferenceFileReader (a preference set's file -> record checks -> store), InputHash
  phase 2, one task per id range:  ThreadReader -> ContaminationFilter -> LengthFilter -> Pairing -> FlaggedPairs
                                   -> MinHashSignature -> ThreadPairsWriter
  phase 3, one process:            ThreadPairsReader -> NearDuplicateFilter -> ExactDedup -> ThreadSplit -> ShardOutput

Phase 2 hands phase 3 one `ThreadPairs` per thread that yields pairs, in files read back in canonical order (site, thread id);
with output.threads it also carries the thread's usable answers, and ShardOutput writes its ThreadRecord beside its pairs
(the same dedup, the same split side).
The readers, the pairing and the indexes are in their own modules (stackexchange, reddit, pairing, near_dedup, contamination);
the blocks say where each runs and what it counts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.pairing import Thread, given_pairs, make_pairs, thread_answers, thread_meta, thread_seed
from data_prep.pipeline import Block, task_progress
from data_prep.records import SPLITS, THREAD_SCHEMA, THREADS_DIR, ShardWriter, thread_record_id


@dataclass
class ThreadPairs:
    """One thread's sampled pairs (and, with output.threads, its answers), from the pairing to the shards."""

    source: str
    domain: str
    thread_id: str
    prompt: str
    rows: list[dict]                                   # PairRecord rows
    flags: set[str] = field(default_factory=set)       # the thread's contamination flags (mode flag): "prompt", "replies"
    flagged: list[str] = field(default_factory=list)   # ids of the pairs that hold a flagged prompt or reply
    sig: bytes | None = None                           # MinHash of the prompt (dedup.near)
    split: str | None = None                           # train or test (phase 3)
    source_split: str | None = None                    # a preference set's own split label of the prompt
    answers: list[dict] | None = None                  # output.threads: every usable answer (ThreadRecord answers)
    pair_index: list[tuple[int, int]] = field(default_factory=list)  # each row's (chosen, rejected) answer indices
    meta: str = ""                                     # output.threads: the ThreadRecord meta

    def thread_record(self) -> dict:
        """The ThreadRecord of the thread as written: its answers and the pairs that reach the pair shards."""
        key = f"{self.domain}/{self.thread_id}"
        return {"id": thread_record_id(self.source, key), "source": self.source, "domain": self.domain,
                "thread_id": self.thread_id, "prompt": self.rows[0]["prompt"], "answers": self.answers,
                "pairs": [{"chosen": c, "rejected": r} for c, r in self.pair_index], "meta": self.meta}


# ------------------------------------------------------------------------------------------------------------------ phase 1
class SiteReader(Block):
    """A Stack Exchange site's tables (Posts, and Users and Votes when read) -> row checks -> its store. Counts `rows.<table>`
    (read, kept, dropped by reason) and, for answers whose question is missing, `replies`."""

    name = "read site"

    def __init__(self, site, db: str, cfg):
        super().__init__()
        self.site, self.db, self.cfg = site, db, cfg
        self.result: dict = {}

    def __call__(self, items=()):
        from data_prep import stackexchange

        progress = task_progress()
        self.result = stackexchange.ingest_site(self.site, Path(self.db), self.cfg, self.stats, progress)
        progress.flush()
        yield from ()


class RedditFileReader(Block):
    """One RS_ (submissions) or RC_ (comments) file -> row checks -> its store. Counts `rows.submissions` or `rows.comments`."""

    name = "read file"

    def __init__(self, path: str, kind: str, db: str, cfg):
        super().__init__()
        self.path, self.kind, self.db, self.cfg = path, kind, db, cfg
        self.result: dict = {}

    def __call__(self, items=()):
        from data_prep import reddit

        progress = task_progress()
        self.result = reddit.ingest_file(Path(self.path), self.kind, Path(self.db), self.cfg, self.stats, progress)
        progress.flush()
        yield from ()


class PreferenceFileReader(Block):
    """One file (or hub dataset) of a preference set -> record checks -> its store (data_prep.preference_sets.ingest_file).
    Counts `rows.records` (read, record, dropped by reason) and the records' own split labels in `source_split`."""

    name = "read records"

    def __init__(self, source: str, input_file, db: str, cfg):
        super().__init__()
        self.source, self.input_file, self.db, self.cfg = source, input_file, db, cfg
        self.result: dict = {}

    def __call__(self, items=()):
        from data_prep import preference_sets

        progress = task_progress()
        self.result = preference_sets.ingest_file(self.input_file, Path(self.db), self.source, self.cfg, self.stats, progress)
        progress.flush()
        yield from ()


class InputHash(Block):
    """The sha256 of an input file, for manifest.json. Counts nothing."""

    name = "hash input"

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.result: dict = {}

    def __call__(self, items=()):
        from data_prep.inputs import sha256_file

        path = Path(self.path)
        self.result = {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        yield from ()


# ------------------------------------------------------------------------------------------------------------------ phase 2
class ThreadReader(Block):
    """The threads of one id range of a store, in id order: a question (post) with its replies, HTML converted to markdown on
    first use, or a preference set's prompt with its replies and given pairs. Counts in `questions` the threads it drops before
    pairing (closed, no answers, ...) and in `replies` their replies and the replies it drops (community wiki, post author,
    unscored, ...)."""

    name = "threads"

    def __init__(self, source: str, db: str, lo: int, hi: int, cfg, site: str | None = None, label: str | None = None):
        super().__init__()
        self.source, self.db, self.lo, self.hi, self.cfg, self.site, self.label = source, db, lo, hi, cfg, site, label
        self.threads = 0

    def __call__(self, items=()):
        from data_prep import reddit, stackexchange

        progress = task_progress()
        if self.source == "stackexchange":
            threads = stackexchange.site_threads(self.site, Path(self.db), self.label, self.lo, self.hi, self.cfg, self.stats)
        elif self.source == "reddit":
            threads = reddit.reddit_threads(Path(self.db), self.lo, self.hi, self.cfg, self.stats)
        else:
            from data_prep import preference_sets

            threads = preference_sets.prompt_threads(self.source, Path(self.db), self.lo, self.hi, self.cfg, self.stats)
        for thread in threads:
            self.threads += 1
            yield thread
            progress(0, 1)
        progress.flush()


class ContaminationFilter(Block):
    """Prompts and replies that share a word n-gram with a benchmark prompt: dropped (mode drop: the thread in `questions`, its
    replies in `replies` as question_dropped; a reply in `replies`), or marked in the pair meta and in `Thread.flags` (mode
    flag). Off without benchmarks."""

    name = "contamination audit"

    def __init__(self, index, mode: str, check_replies: bool):
        super().__init__()
        self.index, self.mode, self.check_replies = index, mode, check_replies
        self.enabled = bool(index)

    def process(self, thread: Thread) -> Thread | None:
        if self.index.overlaps(thread.prompt):
            if self.mode == "drop":
                self.stats.drop("questions", "contaminated_prompt", thread.position)
                self.stats.add("replies", "question_dropped", len(thread.replies))
                return None
            thread.meta["contaminated_prompt"] = True
            thread.flags.add("prompt")
        if self.check_replies:
            kept = []
            for reply in thread.replies:
                if self.index.overlaps(reply.text):
                    if self.mode == "drop":
                        self.stats.drop("replies", "contaminated", {**thread.position, "id": reply.id})
                        continue
                    reply.meta["contaminated"] = True
                    thread.flags.add("replies")
                kept.append(reply)
            thread.replies = kept
        return thread


class LengthFilter(Block):
    """Replies outside the length bounds (pairs.min_reply_chars, pairs.max_reply_chars, in characters of markdown; an empty
    one always): dropped in `replies` with the reason, the rest counted there as usable."""

    name = "length bounds"

    def __init__(self, min_chars: int | None, max_chars: int | None):
        super().__init__()
        self.lo, self.hi = int(min_chars or 0), (None if max_chars is None else int(max_chars))
        self.trivial = self.lo <= 1 and self.hi is None  # then only an empty text is dropped

    def process(self, thread: Thread) -> Thread:
        keep = []
        for r in thread.replies:
            if self.trivial and not r.converted and r.surely_nonempty:
                keep.append(r)  # kept without converting: its text is made only if it lands in a pair
                continue
            n = len(r.text)
            if n == 0:
                self.stats.drop("replies", "empty_after_conversion", {**thread.position, "id": r.id})
            elif n < self.lo:
                self.stats.drop("replies", "too_short", {**thread.position, "id": r.id, "chars": n})
            elif self.hi is not None and n > self.hi:
                self.stats.drop("replies", "too_long", {**thread.position, "id": r.id, "chars": n})
            else:
                keep.append(r)
        self.stats.add("replies", "usable", len(keep))
        thread.replies = keep
        return thread


class Pairing(Block):
    """A thread's usable replies -> pairs (data_prep.pairing.make_pairs: score rule, gap, order rule, at most
    pairs.max_per_question drawn with a generator seeded from the thread), or, for a preference set's given pairs, those whose
    replies are both usable (data_prep.pairing.given_pairs); with `threads` (output.threads), also the thread's answers for
    its ThreadRecord. Counts every reply pair (every given pair) in `pairs_possible` and under one outcome in `pairs`, and the
    thread in `questions` as paired or dropped (too few usable replies, no pair passes)."""

    name = "pairing"

    def __init__(self, cfg, threads: bool = False):
        super().__init__()
        self.cfg, self.threads = cfg, threads

    def process(self, thread: Thread) -> ThreadPairs | None:
        n = len(thread.replies)
        if thread.given_pairs is not None:
            self.stats.add("pairs_possible", "total", len(thread.given_pairs))
            rows, index = given_pairs(thread, thread.replies, self.cfg, self.stats)
        else:
            self.stats.add("pairs_possible", "total", n * (n - 1) // 2)
            if n < 2:
                self.stats.drop("questions", "fewer_than_2_usable_replies", thread.position)
                return None
            rows, index = make_pairs(thread, thread.replies, self.cfg, self.stats)
        if not rows:
            self.stats.drop("questions", "no_pair_after_rules", thread.position)
            return None
        self.stats.add("questions", "paired")
        rec = ThreadPairs(thread.source, thread.domain, thread.thread_id, thread.prompt, rows, thread.flags,
                          source_split=thread.source_split, pair_index=index)
        if self.threads:  # every usable answer's text is needed now, not only the paired ones'
            rec.answers = thread_answers(thread.replies, self.cfg.score_rule)
            rec.meta = thread_meta(thread, self.cfg.score_rule)
        return rec


class FlaggedPairs(Block):
    """Contamination mode flag: which sampled pairs hold a flagged prompt or reply (`contamination`: flagged_pairs_sampled;
    ShardOutput counts them per split)."""

    name = "flagged pairs"

    def __init__(self, enabled: bool):
        super().__init__()
        self.enabled = enabled

    def process(self, rec: ThreadPairs) -> ThreadPairs:
        if "prompt" in rec.flags:
            rec.flagged = [r["id"] for r in rec.rows]
        elif rec.flags:  # some replies flagged: which pairs hold one is in the meta just written (rare: parsed only here)
            for r in rec.rows:
                meta = json.loads(r["meta"])
                if meta["chosen"].get("contaminated") or meta["rejected"].get("contaminated"):
                    rec.flagged.append(r["id"])
        self.stats.add("contamination", "flagged_pairs_sampled", len(rec.flagged))
        return rec


class MinHashSignature(Block):
    """The MinHash of the prompt's word shingles, for NearDuplicateFilter (on with dedup.near.enabled). Counts nothing."""

    name = "MinHash"

    def __init__(self, enabled: bool, num_perm: int, shingle_words: int):
        super().__init__()
        self.enabled, self.num_perm, self.shingle_words = enabled, int(num_perm), int(shingle_words)

    def process(self, rec: ThreadPairs) -> ThreadPairs:
        from data_prep.near_dedup import signature

        rec.sig = signature(rec.prompt, self.num_perm, self.shingle_words)
        return rec


class ThreadPairsWriter(Block):
    """Phase 2's output: its ThreadPairs, pickled into one zstd file per task (read back in order by ThreadPairsReader)."""

    name = "pairs file"

    def __init__(self, path: str):
        super().__init__()
        self.path, self.written = path, 0

    def __call__(self, items):
        import zstandard

        with open(self.path, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as out:
            for rec in items:
                pickle.dump(rec, out, protocol=pickle.HIGHEST_PROTOCOL)
                self.written += 1
        yield from ()


# ------------------------------------------------------------------------------------------------------------------ phase 3
class ThreadPairsReader(Block):
    """Phase 2's files in the order given (canonical: site, thread id). Counts nothing."""

    name = "pairs files"

    def __init__(self, paths: list[str]):
        super().__init__()
        self.paths = paths

    def __call__(self, items=()):
        import zstandard

        progress = task_progress()
        for path in self.paths:
            with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                while True:
                    try:
                        rec = pickle.load(reader)
                    except EOFError:
                        break
                    progress(0, 1)
                    yield rec


class NearDuplicateFilter(Block):
    """A thread whose prompt is a near-duplicate (MinHash LSH, estimated Jaccard >= dedup.near.threshold) of an earlier one is
    dropped with all its pairs: in `threads_out` and, its pairs, in `output`. The index lives on disk (data_prep.near_dedup)."""

    name = "near-duplicate threads"

    def __init__(self, enabled: bool, path: Path, num_perm: int, threshold: float):
        super().__init__()
        self.enabled, self.path, self.num_perm, self.threshold = enabled, path, int(num_perm), float(threshold)

    def __call__(self, items):
        from data_prep.near_dedup import NearDuplicateIndex

        index = NearDuplicateIndex(self.path, self.num_perm, self.threshold)
        try:
            for rec in items:
                if index.seen(rec.sig):
                    self.stats.drop("threads_out", "near_duplicate", {"id": rec.thread_id, "domain": rec.domain})
                    self.stats.drop("output", "near_duplicate_thread", None, len(rec.rows))
                    continue
                yield rec
        finally:
            index.close()


def pair_key(row: dict) -> bytes:
    """What makes two pairs the same: the prompt, the chosen and the rejected text."""
    text = "\x1f".join([m["content"] for m in row["prompt"]] + [row["chosen"], row["rejected"]])
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class ExactDedup(Block):
    """A pair whose (prompt, chosen, rejected) was written before is dropped in `output`; a thread left without pairs is
    dropped in `threads_out` (on with dedup.exact; the index lives on disk)."""

    name = "exact pair dedup"

    def __init__(self, enabled: bool, path: Path):
        super().__init__()
        self.enabled, self.path = enabled, path

    def __call__(self, items):
        from data_prep.near_dedup import ExactPairIndex

        index = ExactPairIndex(self.path)
        try:
            for rec in items:
                rows, pair_index = [], []
                for row, pair in zip(rec.rows, rec.pair_index, strict=True):
                    if index.seen(pair_key(row)):
                        self.stats.drop("output", "exact_duplicate", {"id": row["id"], "thread_id": rec.thread_id})
                    else:
                        rows.append(row)
                        pair_index.append(pair)
                if not rows:
                    self.stats.drop("threads_out", "all_pairs_exact_duplicate", {"id": rec.thread_id, "domain": rec.domain})
                    continue
                rec.rows, rec.pair_index = rows, pair_index
                yield rec
        finally:
            index.close()


def split_of(source: str, domain: str, thread_id: str, test_fraction: float, salt: str = "") -> str:
    """Deterministic thread-hash split: a thread's pairs all land on one side, whatever else is in the run."""
    return "test" if thread_seed(salt, source, domain, thread_id) / 2**64 < test_fraction else "train"


class ThreadSplit(Block):
    """Train or test by a hash of (split.salt, source, domain, thread id): a thread is never on both sides. For a preference
    set (`by_prompt`) the hash is of the prompt alone (its thread id), the same in every set and run; with `use_source_split`
    a prompt the set itself labels keeps its label (test when it has both). Drops nothing."""

    name = "thread split"

    def __init__(self, test_fraction: float, salt: str, by_prompt: bool = False, use_source_split: bool = False):
        super().__init__()
        self.test_fraction, self.salt = float(test_fraction), str(salt)
        self.by_prompt, self.use_source_split = by_prompt, use_source_split

    def process(self, rec: ThreadPairs) -> ThreadPairs:
        if self.use_source_split and rec.source_split:
            rec.split = rec.source_split
        elif self.by_prompt:
            rec.split = split_of("prompt", "", rec.thread_id, self.test_fraction, self.salt)
        else:
            rec.split = split_of(rec.source, rec.domain, rec.thread_id, self.test_fraction, self.salt)
        return rec


class ShardOutput(Block):
    """train/ and test/ parquet shards (each under its final name only once complete) and, with `threads`, threads/train/ and
    threads/test/ (one ThreadRecord per thread written, on its pairs' side). Counts the pairs written in `output` (train,
    test), their threads in `threads_out` (written, written_<split>), the flagged pairs per split in `contamination`, and the
    thread shards' rows and answers in `thread_shards`. `shards` lists the files, relative to the output directory."""

    name = "shards"

    def __init__(self, out_dir: Path, max_rows_per_shard: int, threads: bool = False):
        super().__init__()
        self.out_dir, self.max_rows, self.threads = out_dir, int(max_rows_per_shard), threads
        self.shards: dict[str, list[str]] = {}

    def __call__(self, items):
        out, rows = self.out_dir, self.max_rows
        with contextlib.ExitStack() as stack:
            writers = {side: stack.enter_context(ShardWriter(out / side, rows)) for side in SPLITS}
            if self.threads:
                writers.update({f"{THREADS_DIR}/{side}": stack.enter_context(
                    ShardWriter(out / THREADS_DIR / side, rows, schema=THREAD_SCHEMA)) for side in SPLITS})
            for rec in items:
                side = rec.split
                for row in rec.rows:
                    writers[side].write(row)
                    self.stats.add("output", side)
                    if row["id"] in rec.flagged:
                        self.stats.add("contamination", f"flagged_pairs_{side}")
                self.stats.add("threads_out", "written")
                self.stats.add("threads_out", f"written_{side}")
                if self.threads:
                    writers[f"{THREADS_DIR}/{side}"].write(rec.thread_record())
                    self.stats.add("thread_shards", side)
                    self.stats.add("thread_shards", "answers", len(rec.answers))
                    self.stats.add("thread_shards", "pairs", len(rec.pair_index))
        self.shards = {name: [str(p.relative_to(self.out_dir)) for p in w.shards] for name, w in writers.items()}
        yield from ()
