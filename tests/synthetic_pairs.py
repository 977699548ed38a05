"""Synthetic forum preference pairs in the real PairRecord format: a learnable fixture dataset for the training tests and
scripts/bench_train.py (a test fixture generator, not part of the product: the ground-truth source is data_prep.synthetic).

Threads look like Stack Exchange questions (a title, a blank line, a markdown body) on a handful of sites; each thread has several
answers and every pair is (higher-voted answer, lower-voted answer), like the real collector's output. The signal is learnable
by a tiny model: upvoted answers explain (steps, reasons, code or quantities), downvoted ones brush the asker off (and, as
with real votes, a few brush-offs are upvoted anyway: `noise`). Answer lengths overlap, so length alone does not decide.

`lengths="forum"` draws question and answer lengths from long-tailed (log-normal) distributions like real forum posts — most
short, a few very long — which is what makes padding expensive and packing worth it (scripts/bench_train.py).

`write_dataset(out_dir, train_pairs, test_pairs)` writes out_dir/train/*.parquet, out_dir/test/*.parquet, stats.json, and
manifest.json last; `threads=True` also writes each thread (every answer with its score, its pairs as answer indices) to
out_dir/threads/{train,test}/*.parquet, as `worldpm collect output.threads=true` does. No torch, no worldpm.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from data_prep.records import pair_id, thread_record_id, write_json_atomic, write_pairs, write_threads

SITES = {
    "cooking.stackexchange.com": ["boil eggs", "proof bread dough", "sear a steak", "keep rice from sticking", "store fresh herbs",
                                  "thicken a sauce", "sharpen a knife", "season a cast iron pan"],
    "stackoverflow.com": ["sort a dictionary by value", "read a large csv file", "reverse a linked list", "parse json safely",
                          "profile slow code", "handle unicode errors", "merge two sorted lists", "deduplicate a list"],
    "gardening.stackexchange.com": ["save an overwatered plant", "prune tomato plants", "get rid of aphids", "compost in winter",
                                    "grow basil indoors", "repot a cactus", "water succulents", "test soil ph"],
    "bicycles.stackexchange.com": ["fix a flat tire", "adjust disc brakes", "clean a chain", "true a wheel", "set saddle height",
                                   "stop a squeaky crank", "choose tire pressure", "index a rear derailleur"],
}
GOOD_OPENERS = ["Here is what works reliably:", "The short answer is yes, with one caveat.", "I do this every week; the key is timing.",
                "This comes down to two things.", "Step by step:"]
GOOD_SENTENCES = [
    "First, {t} slowly, because rushing is the usual cause of failure.",
    "Measure carefully: about 5 to 10 minutes is enough in most cases.",
    "The reason this works is that heat spreads evenly when you keep it moderate.",
    "Check the result after each step and adjust by a small amount.",
    "For example, when I {t}, I write down the exact settings so I can repeat them.",
    "If it still fails, the documentation explains the edge cases in detail.",
    "Use a thermometer or a gauge instead of guessing; it removes most of the variance.",
    "Finally, clean up and let everything rest, which prevents the problem from coming back.",
]
GOOD_CODE = "\n\n```python\nresult = sorted(items, key=lambda x: x[1])\nprint(result)\n```\n"
BAD_SENTENCES = [
    "Just google it, honestly.", "No idea, never tried to {t}.", "Why would you even want to {t}?", "lol same problem here",
    "This question has been asked a million times.", "Works on my machine.", "Maybe try something else, idk.",
    "Read the manual.", "I would not bother, it never works anyway.", "Did you try turning it off and on again?",
]
QUESTION_SENTENCES = [
    "I have been trying to {t} for a while and it keeps going wrong.", "Most guides I found contradict each other.",
    "I followed the usual advice but the result is inconsistent.", "What am I missing here?",
    "Is there a reliable method that a beginner can follow?", "Any tips on the common mistakes would help.",
    "I tried it twice last week and both times it failed in a different way.", "My setup is fairly standard, nothing unusual.",
]


def _length(rng: random.Random, lengths: str, median: float, sigma: float, short: tuple[int, int], cap: int) -> int:
    if lengths == "forum":
        return max(1, min(cap, int(round(rng.lognormvariate(math.log(median), sigma)))))
    return rng.randint(*short)


def _text(rng: random.Random, pool: list[str], n_sentences: int, topic: str) -> str:
    return " ".join(rng.choice(pool).format(t=topic) for _ in range(n_sentences))


def _answer(rng: random.Random, good: bool, topic: str, lengths: str) -> str:
    if good:
        n = _length(rng, lengths, 5, 1.0, (2, 5), 120)
        body = rng.choice(GOOD_OPENERS) + " " + _text(rng, GOOD_SENTENCES, n, topic)
        if rng.random() < 0.3:
            body += GOOD_CODE
        if n > 4:  # longer answers get markdown structure, like real ones
            body += "\n\n" + "\n".join(f"{i}. {_text(rng, GOOD_SENTENCES, 1, topic)}" for i in range(1, 4))
        return body
    n = _length(rng, lengths, 3, 1.0, (1, 4), 80)
    return _text(rng, BAD_SENTENCES, n, topic)


def thread_pairs(rng: random.Random, thread: int, lengths: str, noise: float = 0.1) -> tuple[list[dict], dict]:
    """One thread's pairs (PairRecords) and the thread itself (a ThreadRecord listing every pair's answers)."""
    site = rng.choice(sorted(SITES))
    topic = rng.choice(SITES[site])
    title = f"How do I {topic} properly?"
    body = _text(rng, QUESTION_SENTENCES, _length(rng, lengths, 6, 0.9, (1, 4), 150), topic)
    answers = []
    for a in range(rng.randint(2, 4)):
        good = rng.random() < 0.5 if a > 1 else a == 0  # at least one good and one bad answer per thread
        score = rng.randint(5, 60) if good else rng.randint(-5, 3)
        if not good and rng.random() < noise:  # votes are noisy: now and then a brush-off is upvoted
            score = rng.randint(61, 90)
        answers.append((f"{thread}-{a}", _answer(rng, good, topic, lengths), score, good))
    rows, index = [], []
    for i, (aid, text, score, good) in enumerate(answers):
        for j, (bid, other, other_score, other_good) in enumerate(answers[i + 1:], i + 1):
            if good == other_good:
                continue  # pairs of a good and a bad answer: the preference is what the signal (or the noise) says
            (cid, c, cs), (rid, r, rs) = sorted([(aid, text, score), (bid, other, other_score)], key=lambda x: -x[2])
            index.append({"chosen": i if cid == aid else j, "rejected": j if cid == aid else i})
            rows.append({
                "id": pair_id("synthetic", str(thread), cid, rid), "source": "synthetic", "domain": site, "thread_id": str(thread),
                "prompt": [{"role": "user", "content": f"{title}\n\n{body}"}], "chosen": c, "rejected": r,
                "chosen_score": float(cs), "rejected_score": float(rs),
                "meta": json.dumps({"chosen_answer_id": cid, "rejected_answer_id": rid, "generator": "worldpm synthetic_pairs",
                                    "license": "CC0-1.0"}),
            })
    record = {"id": thread_record_id("synthetic", str(thread)), "source": "synthetic", "domain": site, "thread_id": str(thread),
              "prompt": [{"role": "user", "content": f"{title}\n\n{body}"}],
              "answers": [{"id": aid, "text": text, "score": float(score), "meta": json.dumps({"id": aid, "good": good})}
                          for aid, text, score, good in answers],
              "pairs": index, "meta": json.dumps({"generator": "worldpm synthetic_pairs", "license": "CC0-1.0"})}
    return rows, record


def generate(train_pairs: int, test_pairs: int, seed: int = 0, lengths: str = "short", noise: float = 0.1,
             threads: bool = False) -> dict[str, list[dict]]:
    """Pairs for each split; threads never straddle splits (the collector's rule). `noise`: the share of bad answers that get
    upvoted anyway, so about that share of pairs prefer the worse answer (a perfect model scores ~1 - noise). `threads`: also
    "threads/train" and "threads/test", each thread holding exactly its pairs of the split."""
    if lengths not in ("short", "forum"):
        raise ValueError(f"lengths must be 'short' or 'forum', got {lengths!r}")
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {"train": [], "test": []}
    records: dict[str, list[dict]] = {"train": [], "test": []}
    thread = 0
    for split, target in (("train", train_pairs), ("test", test_pairs)):
        while len(out[split]) < target:
            pairs, record = thread_pairs(rng, thread, lengths, noise)
            out[split].extend(pairs)
            record["pairs"] = record["pairs"][: target - (len(out[split]) - len(pairs))]  # the pairs that are kept
            records[split].append(record)
            thread += 1
        out[split] = out[split][:target]
    if threads:
        out.update({f"threads/{split}": [r for r in rs if r["pairs"]] for split, rs in records.items()})
    return out


def write_dataset(out_dir: str | Path, train_pairs: int, test_pairs: int, seed: int = 0, lengths: str = "short",
                  noise: float = 0.1, threads: bool = False) -> Path:
    out_dir = Path(out_dir)
    splits = generate(train_pairs, test_pairs, seed, lengths, noise, threads)
    for split, rows in splits.items():
        (write_threads if split.startswith("threads/") else write_pairs)(rows, out_dir / split)
    stats = {"source": "synthetic", "lengths": lengths, "seed": seed, "noise": noise, "kept": {k: len(v) for k, v in splits.items()}, "dropped": {}}
    write_json_atomic(out_dir / "stats.json", stats, indent=2)
    write_json_atomic(out_dir / "manifest.json", {"complete": True, "splits": {k: len(v) for k, v in splits.items()},
                                                  "generator": "tests.synthetic_pairs"}, indent=2)  # last: marks it complete
    return out_dir

