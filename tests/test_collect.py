"""worldpm collect on the hand-made fixtures (tests/fixtures/collect) and on small generated sites: every rule, the accounting
identity, determinism across worker counts, the split, dedup, contamination, and the output directory's life cycle."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep.blocks import split_of
from data_prep.collect import run
from data_prep.entry import compose
from data_prep.records import PAIR_SCHEMA, check_record, read_pairs

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "collect"
SITE_7Z = FIX / "cooking.stackexchange.com.7z"
SITE_DIR = FIX / "cooking.stackexchange.com"
REDDIT = FIX / "reddit"
sys.path.insert(0, str(ROOT / "scripts"))


def collect(out, *overrides, source="stackexchange", path=SITE_7Z):
    cfg = compose("collect", [f"source={source}", f"source.path={path}", f"output_dir={out}", *overrides])
    run(cfg)
    return json.loads((Path(out) / "stats.json").read_text()), json.loads((Path(out) / "manifest.json").read_text())


def rows(out, split=None):
    splits = [split] if split else ["train", "test"]
    out_rows = []
    for s in splits:
        if list((Path(out) / s).glob("*.parquet")):
            out_rows += read_pairs(Path(out) / s).to_pylist()
    return out_rows


def by_answers(out):
    return {(json.loads(r["meta"])["chosen"]["id"], json.loads(r["meta"])["rejected"]["id"]): r for r in rows(out)}


def table_text(text: str) -> str:
    """Pipe tables with their padding taken out (converters align columns differently)."""
    return re.sub(r"-{3,}", "---", re.sub(r" {2,}", " ", text))


@pytest.mark.parametrize("converter", ["html_to_markdown", "markdownify"])
def test_html_to_markdown_converters(converter):
    from data_prep.html_markdown import html_to_markdown

    sys.path.insert(0, str(FIX))
    from make_fixtures import GOOD, LATEX

    md = html_to_markdown(GOOD, converter)
    assert "**hungry**" in md and "1. Discard all but 50 g.\n2. Feed 1:1:1 by weight." in md
    assert "```python\nratio = {'starter': 50, 'flour': 50, 'water': 50}\nprint(sum(ratio.values()) > 100)\n```" in md
    assert "[this guide](https://example.com/starter)" in md and "`rye`" in md
    md = html_to_markdown(LATEX, converter)
    assert "$h = \\frac{w}{f}$ where $w_1$ is water; keep $h < 0.8$." in md
    assert "> Bakers' percentages are by weight." in md
    assert "| flour | water |\n| --- | --- |\n| 100 | 75 |" in table_text(md)
    assert '```rust\nfn main() { println!("{}", 75 * 2); }\n```' in md and "café & crème — fine" in md
    md = html_to_markdown('<h2>Title</h2><pre class="lang-none"><code>plain\n</code></pre><ul><li>a</li><li>b</li></ul>', converter)
    assert "## Title" in md and "```\nplain\n```" in md and "- a\n- b" in md
    assert "\n\n\n" not in html_to_markdown("<p>a</p><br><br><br><p>b</p>", converter)


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "worldpm", "collect", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two small generated sites as .7z archives (the generator's exact dump format), in one directory."""
    from make_stackexchange_dump import generate

    base = tmp_path_factory.mktemp("synthetic")
    for i, name in enumerate(["alpha.stackexchange.com", "beta.stackexchange.com"]):
        generate(base / name, name, 120 + 40 * i, None, seed=i, tag_format="angle" if i == 0 else "pipe", n_users=50, pack=True)
    archives = base / "archives"
    archives.mkdir()
    for name in ["alpha.stackexchange.com", "beta.stackexchange.com"]:
        shutil.move(str(base / f"{name}.7z"), archives / f"{name}.7z")
    return base


# ------------------------------------------------------------------------------------------------------------- Stack Exchange
def test_site_7z_counts_every_row_by_hand(tmp_path):
    stats, manifest = collect(tmp_path / "o", "pairs.max_per_question=null", "split.test_fraction=0")
    assert stats["rows"]["Posts"] == {"read": 28, "question": 6, "answer": 15, "dropped": {
        "missing_Score": 1, "bad_Score": 1, "empty_body": 1, "invalid_characters": 1, "malformed_row": 1, "other_post_type": 1,
        "duplicate_Id": 1}}
    assert stats["rows"]["Users"] == {"read": 7, "user": 6, "dropped": {"bad_Id": 1}}
    assert stats["questions"] == {"total": 6, "paired": 4, "dropped": {"fewer_than_2_answers": 1, "all_answers_same_score": 1}}
    # answers: 15 = 11 usable (5 in thread 1, 2 in 7, 2 in 22, 2 in 25) + 1 orphan + 3 in unpairable threads (10, 12)
    assert stats["replies"] == {"total": 15, "usable": 11, "dropped": {"question_missing": 1, "no_pair_possible": 3}}
    # pairs: C(5,2) + 1 + 1 + 1 = 13, of which answers 3 and 4 (score 1 each) tie; thread 25 repeats thread 1's question
    assert stats["pairs"] == {"total": 13, "sampled": 12, "dropped": {"equal_score": 1}}
    assert stats["output"] == {"sampled": 12, "train": 11, "test": 0, "dropped": {"near_duplicate_thread": 1}}
    assert stats["threads_out"]["dropped"] == {"near_duplicate": 1} and stats["all_accounted"]
    assert all(stats["identities"].values())
    got = rows(tmp_path / "o")
    assert len(got) == 11 == manifest["counts"]["train"]
    for r in got:
        check_record(r)
        assert r["chosen_score"] > r["rejected_score"]
    assert len({r["id"] for r in got}) == len(got)
    rejects = [json.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    reasons = {(r["block"], r["reason"]) for r in rejects}
    assert {("rows.Posts", "missing_Score"), ("rows.Posts", "bad_Score"), ("rows.Posts", "empty_body"),
            ("rows.Posts", "invalid_characters"), ("rows.Posts", "malformed_row"), ("replies", "question_missing"),
            ("rows.Users", "bad_Id")} <= reasons
    malformed = next(r for r in rejects if r["reason"] == "malformed_row")
    assert malformed["line"] == 22 and "Posts.xml" in malformed["file"] and "nbsp" in malformed["detail"]
    assert next(r for r in rejects if r["reason"] == "question_missing")["id"] == "15"


def test_manifest_lists_inputs_with_size_and_hash_and_the_resolved_config(tmp_path):
    import hashlib

    _, manifest = collect(tmp_path / "o", "workers=2")
    assert manifest["complete"] is True
    (entry,) = manifest["inputs"]
    assert entry["path"] == str(SITE_7Z) and entry["bytes"] == SITE_7Z.stat().st_size
    assert entry["sha256"] == hashlib.sha256(SITE_7Z.read_bytes()).hexdigest()
    assert manifest["config"]["workers"] == 2 and manifest["config"]["source"]["path"] == str(SITE_7Z)
    assert manifest["shards"]["train"] == ["train/part-00000.parquet"]
    table = pq.read_table(tmp_path / "o" / "train" / "part-00000.parquet")
    assert table.schema.equals(PAIR_SCHEMA)


def test_bare_posts_xml_and_extracted_directory_match_the_archive(tmp_path):
    collect(tmp_path / "a", "pairs.max_per_question=null")
    collect(tmp_path / "b", "pairs.max_per_question=null", path=SITE_DIR)
    stats, _ = collect(tmp_path / "c", "pairs.max_per_question=null", "source.site=cooking.stackexchange.com",
                       path=SITE_DIR / "Posts.xml")
    a, b, c = by_answers(tmp_path / "a"), by_answers(tmp_path / "b"), by_answers(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys() and len(a) == 11
    for key in a:
        assert a[key]["id"] == b[key]["id"] == c[key]["id"]
        assert a[key]["chosen"] == c[key]["chosen"] and a[key]["prompt"] == c[key]["prompt"]
    assert "Users" not in stats["rows"]  # a bare Posts.xml: no author names, only display names the posts carry
    meta = json.loads(c[("2", "3")]["meta"])
    assert meta["chosen"]["author"] is None and meta["chosen"]["author_url"] == "https://cooking.stackexchange.com/users/11"


def test_prompt_markdown_and_attribution(tmp_path):
    collect(tmp_path / "o", "pairs.max_per_question=null")
    pairs = by_answers(tmp_path / "o")
    r = pairs[("2", "3")]
    assert r["prompt"] == [{"role": "user", "content": "Starter smells like acetone\n\nMy sourdough starter smells like "
                                                       "*acetone*. Is it dead, or can I save it? I feed it every day with rye "
                                                       "flour and water at room temperature."}]
    chosen = r["chosen"]
    assert "**hungry**" in chosen and "1. Discard all but 50 g.\n2. Feed 1:1:1 by weight." in chosen
    assert "```python\nratio = {'starter': 50, 'flour': 50, 'water': 50}\nprint(sum(ratio.values()) > 100)\n```" in chosen
    assert "[this guide](https://example.com/starter)" in chosen and "`rye`" in chosen
    meta = json.loads(r["meta"])
    assert meta["site"] == "cooking.stackexchange.com" and meta["question_url"] == "https://cooking.stackexchange.com/questions/1"
    assert meta["question_author"] == "Alice Baker" and meta["question_author_url"] == "https://cooking.stackexchange.com/users/10"
    assert meta["chosen"]["author"] == "Bob Crust" and meta["chosen"]["url"] == "https://cooking.stackexchange.com/a/2"
    assert meta["chosen"]["license"] == "CC BY-SA 4.0" and meta["chosen"]["accepted"] is True
    assert meta["rejected"]["author"] == "Carol" and meta["tags"] == ["sourdough", "starter"]
    deleted = json.loads(pairs[("6", "3")]["meta"])["chosen"]
    assert deleted["author"] == "gone user" and deleted["author_url"] is None
    rich = pairs[("23", "24")]
    assert json.loads(rich["meta"])["tags"] == ["bread", "hydration"]  # the newer |a|b| tag format
    assert "$h = \\frac{w}{f}$ where $w_1$ is water; keep $h < 0.8$." in rich["chosen"]  # LaTeX as written
    assert "> Bakers' percentages are by weight." in rich["chosen"]
    assert "| flour | water |\n| --- | --- |\n| 100 | 75 |" in table_text(rich["chosen"])
    assert '```rust\nfn main() { println!("{}", 75 * 2); }\n```' in rich["chosen"]
    assert "café & crème — fine" in rich["chosen"]


def test_split_tags_both_formats():
    from data_prep.stackexchange import split_tags

    assert split_tags("<c#><floating-point>") == ["c#", "floating-point"]
    assert split_tags("|lds|joseph-smith|") == ["lds", "joseph-smith"]
    assert split_tags("") == [] and split_tags(None) == []


def test_post_filters_options(tmp_path):
    stats, _ = collect(tmp_path / "o", "pairs.max_per_question=null", "source.drop_closed=true",
                       "source.drop_community_wiki=true", "source.drop_deleted_owner=true")
    assert stats["questions"]["dropped"]["closed"] == 1
    assert stats["replies"]["dropped"]["community_wiki"] == 1 and stats["replies"]["dropped"]["deleted_owner"] == 1
    assert stats["replies"]["dropped"]["question_dropped"] == 2  # the closed question's answers
    ids = {k for k in by_answers(tmp_path / "o")}
    assert not any("5" in k or "6" in k or "8" in k for k in ids) and ("2", "3") in ids
    assert all(stats["identities"].values())


def test_score_gap_and_length_bounds(tmp_path):
    stats, _ = collect(tmp_path / "o", "pairs.max_per_question=null", "pairs.min_score_gap=3")
    pairs = by_answers(tmp_path / "o")
    assert all(r["chosen_score"] - r["rejected_score"] >= 3 for r in pairs.values())
    assert stats["pairs"]["dropped"]["score_gap_below_min"] == sum(
        1 for x, y in combinations([5, 1, 1, -2, 3], 2) if x != y and abs(x - y) < 3) + 1  # + thread 7's 2 vs 0
    stats, _ = collect(tmp_path / "p", "pairs.max_per_question=null", "pairs.min_reply_chars=20", "pairs.max_reply_chars=200")
    texts = [t for r in rows(tmp_path / "p") for t in (r["chosen"], r["rejected"])]
    assert texts and all(20 <= len(t) <= 200 for t in texts)
    assert stats["replies"]["dropped"]["too_short"] >= 2 and stats["replies"]["dropped"]["too_long"] >= 1
    assert all(stats["identities"].values())


def test_stackllama_score_rules(tmp_path):
    from data_prep.pairing import round_half_up, stackllama_score

    assert round_half_up(2.5) == 3 and round_half_up(1.5) == 2 and round(2.5) == 2  # half up, unlike Python's round
    assert stackllama_score(5, True) == round_half_up(math.log2(6)) + 1 == 4
    assert stackllama_score(-2, False) == -1 and stackllama_score(0, False) == 0
    collect(tmp_path / "s", "pairs.max_per_question=null", "pairs.score_rule=stackllama")
    pairs = by_answers(tmp_path / "s")
    assert (pairs[("2", "3")]["chosen_score"], pairs[("2", "3")]["rejected_score"]) == (4.0, 1.0)
    assert pairs[("6", "5")]["rejected_score"] == -1.0 and ("3", "4") not in pairs and ("4", "3") not in pairs
    # with exact upvotes from Votes.xml: answer 3 (Score 1) has 9 upvotes -> 3, answer 4 (Score 1) has 1 -> 1, answer 2 has 6 -> 3 + 1
    stats, _ = collect(tmp_path / "v", "pairs.max_per_question=null", "pairs.score_rule=stackllama_votes")
    pairs = by_answers(tmp_path / "v")
    assert (pairs[("2", "3")]["chosen_score"], pairs[("2", "3")]["rejected_score"]) == (4.0, 3.0)
    assert (pairs[("3", "4")]["chosen_score"], pairs[("3", "4")]["rejected_score"]) == (3.0, 1.0)
    assert stats["rows"]["Votes"]["vote"] == 52 and stats["rows"]["Votes"]["dropped"] == {"other_vote_type": 1}
    assert json.loads(pairs[("3", "4")]["meta"])["chosen"]["upvotes"] == 9


def test_max_per_question_is_seeded_by_the_thread(tmp_path):
    collect(tmp_path / "a", "pairs.max_per_question=2")
    collect(tmp_path / "b", "pairs.max_per_question=2")
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["id"] for r in a] == [r["id"] for r in b]
    per_thread = defaultdict(int)
    for r in a:
        per_thread[r["thread_id"]] += 1
    assert per_thread["1"] == 2
    from data_prep.pairing import thread_seed

    assert thread_seed(0, "stackexchange", "x", "1") == thread_seed(0, "stackexchange", "x", "1") != thread_seed(1, "stackexchange", "x", "1")


def test_pair_counts_match_an_independent_grouping(tmp_path, synthetic):
    """pairs.total, equal_score and the thread counts against a plain in-memory pass over the generated Posts.xml."""
    from lxml import etree

    site = synthetic / "alpha.stackexchange.com"
    stats, _ = collect(tmp_path / "o", "pairs.max_per_question=null", "dedup.near.enabled=false", "dedup.exact=false",
                       path=site / "Posts.xml")
    answers, questions = defaultdict(list), set()
    for _, el in etree.iterparse(str(site / "Posts.xml"), tag="row"):
        if el.get("PostTypeId") == "1":
            questions.add(el.get("Id"))
        elif el.get("PostTypeId") == "2":
            answers[el.get("ParentId")].append(int(el.get("Score")))
        el.clear()
    groups = [answers[q] for q in questions]
    pairable = [g for g in groups if len(g) >= 2 and len(set(g)) >= 2]
    assert stats["questions"]["paired"] == len(pairable)
    assert stats["pairs"]["total"] == sum(len(g) * (len(g) - 1) // 2 for g in pairable)
    assert stats["pairs"]["dropped"]["equal_score"] == sum(1 for g in pairable for x, y in combinations(g, 2) if x == y)
    assert stats["output"]["train"] + stats["output"]["test"] == len(rows(tmp_path / "o")) == stats["pairs"]["sampled"]
    assert stats["rows"]["Posts"]["question"] == len(questions)


def test_identical_output_across_worker_counts(tmp_path, synthetic):
    archives = synthetic / "archives"
    s1, m1 = collect(tmp_path / "w1", "workers=1", "partitions=3", "split.test_fraction=0.3", path=archives)
    s2, m2 = collect(tmp_path / "w2", "workers=2", "partitions=3", "split.test_fraction=0.3", path=archives)
    assert s1 == s2
    for split in ("train", "test"):
        t1, t2 = read_pairs(tmp_path / "w1" / split), read_pairs(tmp_path / "w2" / split)
        assert t1.equals(t2) and t1.num_rows > 0
    assert (tmp_path / "w1" / "rejects.jsonl").read_text() == (tmp_path / "w2" / "rejects.jsonl").read_text()
    assert {r["domain"] for r in rows(tmp_path / "w1")} == {"alpha.stackexchange.com", "beta.stackexchange.com"}
    assert m1["counts"] == m2["counts"]


def test_split_puts_each_thread_on_one_side(tmp_path, synthetic):
    stats, _ = collect(tmp_path / "o", "split.test_fraction=0.3", "pairs.max_per_question=3", path=synthetic / "archives")
    train, test = rows(tmp_path / "o", "train"), rows(tmp_path / "o", "test")
    key = lambda r: (r["domain"], r["thread_id"])  # noqa: E731
    assert train and test and not ({key(r) for r in train} & {key(r) for r in test})
    for r in train + test:
        assert split_of("stackexchange", r["domain"], r["thread_id"], 0.3) == ("test" if r in test else "train")
    threads = {key(r) for r in train + test}
    assert 0.15 < len({key(r) for r in test}) / len(threads) < 0.45
    assert stats["threads_out"]["written_test"] == len({key(r) for r in test})


def _threads(out, split):
    from data_prep.records import THREAD_SCHEMA, check_thread_record

    files = list((Path(out) / "threads" / split).glob("*.parquet"))
    got = read_pairs(Path(out) / "threads" / split, THREAD_SCHEMA).to_pylist() if files else []
    for t in got:
        check_thread_record(t)
    return got


def test_thread_shards_hold_every_usable_answer_and_exactly_the_pairs_written(tmp_path, synthetic):
    """output.threads: per split, the thread shards' pairs (answer indices) rebuild the pair shards row for row, with the
    same dedup and split; with every pair sampled, a thread's answers are exactly the answers of its pairs, and, where the
    collector dropped no reply, every answer of the question in Posts.xml (counted independently with lxml)."""
    from lxml import etree

    from data_prep.records import pair_id

    site = synthetic / "alpha.stackexchange.com"
    stats, manifest = collect(tmp_path / "t", "output.threads=true", "pairs.max_per_question=null", "split.test_fraction=0.3",
                              "dedup.exact=false", path=site / "Posts.xml")
    assert stats["all_accounted"] and stats["thread_shards"]["train"] > 0 and stats["thread_shards"]["test"] > 0
    assert manifest["counts"]["thread_shards"] == stats["thread_shards"]
    assert {"threads/train", "threads/test"} <= set(manifest["shards"])
    per_question = defaultdict(int)
    for _, el in etree.iterparse(str(site / "Posts.xml"), tag="row"):
        if el.get("PostTypeId") == "2":
            per_question[el.get("ParentId")] += 1
        el.clear()
    for split in ("train", "test"):
        threads, pairs = _threads(tmp_path / "t", split), rows(tmp_path / "t", split)
        rebuilt = {}
        for t in threads:
            assert split_of("stackexchange", t["domain"], t["thread_id"], 0.3) == split
            answers = t["answers"]
            for p in t["pairs"]:
                c, r = answers[p["chosen"]], answers[p["rejected"]]
                rebuilt[pair_id("stackexchange", f"{t['domain']}/{t['thread_id']}", c["id"], r["id"])] = (
                    t["prompt"], c["text"], r["text"], c["score"], r["score"], c["score"] > r["score"])
            assert {a for p in t["pairs"] for a in p.values()} == set(range(len(answers)))  # every answer is in a pair
            assert len(answers) == per_question[t["thread_id"]]  # no reply of a paired thread was dropped (asserted below)
        assert rebuilt == {r["id"]: (r["prompt"], r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"], True)
                           for r in pairs}
    assert set(stats["replies"]["dropped"]) <= {"no_pair_possible", "question_dropped"}  # reasons that drop whole threads
    # dedup drops pairs from a thread's record too; the default collect writes no thread shards
    stats2, _ = collect(tmp_path / "d", "output.threads=true", "pairs.max_per_question=null",
                        path=synthetic / "archives" / "alpha.stackexchange.com.7z")
    assert stats2["output"]["dropped"]["exact_duplicate"] > 0 and stats2["all_accounted"]
    assert sum(len(t["pairs"]) for s in ("train", "test") for t in _threads(tmp_path / "d", s)) == len(rows(tmp_path / "d"))
    collect(tmp_path / "n")
    assert not (tmp_path / "n" / "threads").exists()


def test_exact_and_near_duplicates(tmp_path, synthetic):
    site = synthetic / "archives" / "alpha.stackexchange.com.7z"
    stats, _ = collect(tmp_path / "d", "pairs.max_per_question=null", path=site)
    got = rows(tmp_path / "d")
    keys = [(r["prompt"][0]["content"], r["chosen"], r["rejected"]) for r in got]
    assert len(keys) == len(set(keys)) and stats["output"]["dropped"]["exact_duplicate"] > 0
    stats2, _ = collect(tmp_path / "n", "pairs.max_per_question=null", "dedup.exact=false", "dedup.near.enabled=false", path=site)
    keys2 = [(r["prompt"][0]["content"], r["chosen"], r["rejected"]) for r in rows(tmp_path / "n")]
    assert len(keys2) > len(set(keys2)) and "dropped" in stats2["output"] and not stats2["output"]["dropped"]
    # the fixture's thread 25 repeats thread 1's question: the later one goes
    stats3, _ = collect(tmp_path / "f", "pairs.max_per_question=null")
    assert "25" not in {r["thread_id"] for r in rows(tmp_path / "f")} and stats3["threads_out"]["dropped"]["near_duplicate"] == 1
    stats4, _ = collect(tmp_path / "g", "pairs.max_per_question=null", "dedup.near.enabled=false")
    assert "25" in {r["thread_id"] for r in rows(tmp_path / "g")}


def _benchmarks(tmp_path, question: str, answer: str) -> list[Path]:
    """The same overlap hidden in benchmark files of several real formats."""
    d = tmp_path / "bench"
    d.mkdir(parents=True)
    (d / "rewardbench.jsonl").write_text(json.dumps({"prompt": "How do I detail a car?", "chosen": "x", "chosen_model": "a",
                                                     "rejected": "y", "rejected_model": "b", "subset": "alpacaeval-easy", "id": 0}) + "\n")
    (d / "total_dataset.json").write_text(json.dumps([{"id": 0, "prompt": question, "chosen": ["a", "b", "c"],
                                                       "rejected": ["d", "e", "f"], "domain": "chat"}]))
    (d / "rmb.json").write_text(json.dumps([{"pair_uid": "1", "conversation_input": [{"content": answer, "language": "English",
                                                                                      "role": "user"}],
                                             "chosen": {"llm_name": "m", "answer": "z", "score": 5.0},
                                             "reject": {"llm_name": "n", "answer": "w", "score": 1.0}}]))
    (d / "biasbench.json").write_text(json.dumps({"length bias": [{"bias": "length", "instruction": "Tell me a joke about cats "
                                                                   "and dogs living together", "response1": "a", "response2": "b",
                                                                   "label": 1}]}))
    import pyarrow as pa

    pq.write_table(pa.table({"prompt": ["What is the capital of France and why is it famous?"], "response_1": ["Paris"]}),
                   d / "ppe.parquet")
    return [d / "rewardbench.jsonl", d / "total_dataset.json", d / "rmb.json", d / "biasbench.json", d / "ppe.parquet"]


def test_contamination_audit_drop_and_flag(tmp_path):
    from data_prep.contamination import NgramIndex

    files = _benchmarks(tmp_path, "Is it dead, or can I save it? I feed it every day with rye flour and water at room temperature.",
                        "Bakers' percentages are by weight, hydration is water over flour in a rustic loaf at home today please")
    index = NgramIndex.from_files(files, 13, 8)
    assert index.summary()["prompts"] == 5 and index.overlaps("so is it dead, or can I save it? I feed it every day with rye flour")
    bench = "[" + ",".join(str(f) for f in files) + "]"
    stats, _ = collect(tmp_path / "d", "pairs.max_per_question=null", f"contamination.benchmarks={bench}")
    assert stats["questions"]["dropped"]["contaminated_prompt"] == 2  # thread 1 and its repeat, thread 25
    assert {r["thread_id"] for r in rows(tmp_path / "d")} == {"7", "22"} and all(stats["identities"].values())
    # a reply that overlaps: drop it alone
    files2 = _benchmarks(tmp_path / "x", "nothing in common with the site at all, just a long enough benchmark prompt here",
                         "Hydration is h = frac w f where w_1 is water keep h 0.8 Bakers percentages are by weight")
    bench2 = "[" + ",".join(str(f) for f in files2) + "]"
    stats, _ = collect(tmp_path / "r", "pairs.max_per_question=null", f"contamination.benchmarks={bench2}")
    assert stats["replies"]["dropped"]["contaminated"] == 1 and "22" not in {r["thread_id"] for r in rows(tmp_path / "r")}
    stats, _ = collect(tmp_path / "f", "pairs.max_per_question=null", f"contamination.benchmarks={bench}", "contamination.mode=flag")
    flagged = [r for r in rows(tmp_path / "f") if json.loads(r["meta"]).get("contaminated_prompt")]
    assert {r["thread_id"] for r in flagged} == {"1"} and stats["contamination"]["flagged_pairs_train"] == len(flagged) > 0


def test_contamination_flag_mode_counts_pairs_with_a_flagged_reply(tmp_path):
    files = _benchmarks(tmp_path / "x", "nothing in common with the site at all, just a long enough benchmark prompt here",
                        "Hydration is h = frac w f where w_1 is water keep h 0.8 Bakers percentages are by weight")
    bench = "[" + ",".join(str(f) for f in files) + "]"
    stats, _ = collect(tmp_path / "f", "pairs.max_per_question=null", f"contamination.benchmarks={bench}", "contamination.mode=flag",
                       "split.test_fraction=0.5")
    metas = {r["id"]: json.loads(r["meta"]) for r in rows(tmp_path / "f")}
    flagged = {i for i, m in metas.items() if m["chosen"].get("contaminated") or m["rejected"].get("contaminated")}
    assert flagged and not any(m.get("contaminated_prompt") for m in metas.values())
    c = stats["contamination"]
    assert c["flagged_pairs_sampled"] == c.get("flagged_pairs_train", 0) + c.get("flagged_pairs_test", 0) == len(flagged)


def test_completed_output_is_refused_unless_overwrite_and_a_crash_leaves_no_manifest(tmp_path, monkeypatch):
    out = tmp_path / "o"
    collect(out)
    result = cli(f"source.path={SITE_7Z}", f"output_dir={out}")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "overwrite=true" in result.stderr and str(out) in result.stderr
    from data_prep import collect as collect_module

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(collect_module, "_write_output", boom)
    with pytest.raises(RuntimeError):
        collect(out, "overwrite=true")
    assert not (out / "manifest.json").exists() and not (out / "stats.json").exists()
    monkeypatch.undo()
    collect(out)  # an incomplete directory is not refused
    assert (out / "manifest.json").exists()


# ------------------------------------------------------------------------------------------------------------- Reddit
def test_reddit_fixture_needs_a_long_window_decoder():
    import zstandard

    data = (REDDIT / "RC_2023-01.zst").read_bytes()
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj().decompress(data).count(b"\n") == 12


def test_reddit_shp_rules_by_hand(tmp_path):
    stats, _ = collect(tmp_path / "o", "pairs.max_per_question=null", source="reddit", path=REDDIT)
    assert stats["rows"]["submissions"] == {"read": 7, "submission": 2, "dropped": {
        "bad_json": 1, "not_self_post": 1, "nsfw": 1, "post_score_below_min": 1, "deleted_or_removed": 1}}
    assert stats["rows"]["comments"] == {"read": 12, "comment": 7, "dropped": {
        "bad_json": 1, "not_top_level": 1, "comment_score_below_min": 1, "deleted_or_removed": 1, "moderator": 1}}
    assert stats["replies"]["dropped"] == {"post_author": 1, "post_missing_or_dropped": 1, "no_pair_possible": 2}
    assert stats["pairs"] == {"total": 3, "sampled": 2, "dropped": {"preferred_written_earlier": 1}}
    pairs = by_answers(tmp_path / "o")
    assert set(pairs) == {("c1", "c2"), ("c3", "c2")}  # c1 (20) beats c3 (8) but was written earlier: no evidence
    r = pairs[("c1", "c2")]
    assert r["prompt"][0]["content"] == "Why does my bread collapse?\n\nIt rises & then falls in the oven."
    assert r["chosen"] == "Over-proofed: shorten the second rise." and r["domain"] == "AskCulinary"
    assert pairs[("c3", "c2")]["chosen"] == "Use a stronger flour & less water."
    meta = json.loads(r["meta"])
    assert meta["post_url"] == "https://www.reddit.com/r/AskCulinary/comments/p1/" and meta["chosen"]["author"] == "a"
    assert all(stats["identities"].values())
    stats, _ = collect(tmp_path / "p", "pairs.max_per_question=null", "pairs.order_rule=null", "source.min_comment_score=1",
                       source="reddit", path=REDDIT)
    assert ("c1", "c3") in by_answers(tmp_path / "p") and stats["rows"]["comments"]["comment"] == 8


def test_reddit_comments_of_a_dropped_post_between_kept_posts_are_skipped(tmp_path):
    """A comment whose post was dropped (NSFW here) and whose post id lies between two kept posts: counted once as
    post_missing_or_dropped, and the later post still gets its own comments (the merge-join must skip it, not stall on it)."""
    import zstandard

    def sub(sid, **extra):
        return {"id": sid, "subreddit": "AskCulinary", "author": f"op{sid}", "title": f"Question {sid}?", "selftext": "Body.",
                "is_self": True, "over_18": False, "score": 50, "created_utc": 1600000000, **extra}

    def com(cid, link, score, t):
        return {"id": cid, "link_id": f"t3_{link}", "parent_id": f"t3_{link}", "author": f"u{cid}", "body": f"Answer {cid}.",
                "score": score, "created_utc": t, "subreddit": "AskCulinary"}

    dump = tmp_path / "dump"
    dump.mkdir()
    subs = [sub("p1"), sub("p3", over_18=True), sub("p7")]  # base 36: p1 < p3 < p7
    coms = [com("c1", "p1", 20, 1600000200), com("c2", "p1", 5, 1600000100), com("c3", "p3", 9, 1600000100),
            com("c4", "p7", 20, 1600000200), com("c5", "p7", 5, 1600000100)]
    for name, lines in (("RS_2023-02.zst", subs), ("RC_2023-02.zst", coms)):
        (dump / name).write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    for parts in (1, 2):
        out = tmp_path / f"o{parts}"
        stats, _ = collect(out, "pairs.max_per_question=null", f"partitions={parts}", source="reddit", path=dump)
        assert all(stats["identities"].values()) and stats["replies"]["dropped"] == {"post_missing_or_dropped": 1}
        assert stats["replies"]["usable"] == 4 and stats["questions"]["paired"] == 2
        assert set(by_answers(out)) == {("c1", "c2"), ("c4", "c5")}


def test_reddit_reader_needs_neither_the_stack_exchange_reader_nor_lxml():
    code = ("import sys, data_prep.reddit; bad = [m for m in ('data_prep.stackexchange', 'data_prep.xml_rows', "
            "'data_prep.html_markdown', 'lxml') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_reddit_subreddit_filter_ignores_case(tmp_path):
    stats, _ = collect(tmp_path / "o", "pairs.max_per_question=null", "source.subreddits=[askculinary]", source="reddit",
                       path=REDDIT)
    assert stats["rows"]["submissions"]["submission"] == 2 and stats["rows"]["comments"]["comment"] == 7
    assert set(by_answers(tmp_path / "o")) == {("c1", "c2"), ("c3", "c2")}
    stats, _ = collect(tmp_path / "p", "source.subreddits=[AskScience]", source="reddit", path=REDDIT)
    assert stats["rows"]["submissions"] == {"read": 7, "dropped": {"bad_json": 1, "other_subreddit": 6}}
    assert stats["rows"]["comments"] == {"read": 12, "dropped": {"bad_json": 1, "other_subreddit": 11}}
    assert stats["output"]["train"] + stats["output"]["test"] == 0 and all(stats["identities"].values())


def test_reddit_identical_across_worker_counts(tmp_path):
    s1, _ = collect(tmp_path / "a", "workers=1", source="reddit", path=REDDIT)
    s2, _ = collect(tmp_path / "b", "workers=2", source="reddit", path=REDDIT)
    assert s1 == s2 and [r["id"] for r in rows(tmp_path / "a")] == [r["id"] for r in rows(tmp_path / "b")]


# ------------------------------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("args,needle", [
    (["output_dir=/tmp/x"], "source.path"),
    (["source.path=/no/such/dump.7z", "output_dir=/tmp/x"], "/no/such/dump.7z"),
    (["source=quora", "source.path=x", "output_dir=/tmp/x"], "quora"),
    ([f"source.path={SITE_7Z}", "output_dir=/tmp/x", "pairs.max_per_question=0"], "pairs.max_per_question=0"),
    ([f"source.path={SITE_7Z}", "output_dir=/tmp/x", "split.test_fraction=2"], "split.test_fraction=2"),
    ([f"source.path={SITE_7Z}", "output_dir=/tmp/x", "contamination.benchmarks=[/no/bench.json]"], "/no/bench.json"),
])
def test_bad_config_is_one_line(args, needle):
    result = cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0] and "error" in lines[0], result.stderr


def test_output_loads_with_datasets_and_the_main_job_sample(tmp_path):
    """The embedded sample (the main job's input) collects into shards `datasets` loads, with a test split to evaluate on."""
    from datasets import load_dataset

    sample = ROOT / "data_prep" / "sample" / "synthetic.stackexchange.com.7z"
    assert sample.stat().st_size < 500_000
    stats, manifest = collect(tmp_path / "o", "pairs.max_per_question=8", "split.test_fraction=0.2", "workers=2", path=sample)
    ds = load_dataset("parquet", data_dir=str(tmp_path / "o"), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "test"} and ds["train"].num_rows == manifest["counts"]["train"] > 2000
    assert ds["test"].num_rows == manifest["counts"]["test"] > 500
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in ds["test"]) / ds["test"].num_rows
    assert longer > 0.7  # the votes follow answer quality (data_prep/sample/README.md)


def test_stack_overflow_per_table_archives_form_one_site(tmp_path):
    import py7zr

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for table in ("Posts", "Users"):
        with py7zr.SevenZipFile(dumps / f"stackoverflow.com-{table}.7z", "w") as z:
            z.write(SITE_DIR / f"{table}.xml", f"{table}.xml")
    stats, manifest = collect(tmp_path / "o", "pairs.max_per_question=null", path=dumps)
    assert {r["domain"] for r in rows(tmp_path / "o")} == {"stackoverflow.com"}
    assert stats["rows"]["Users"]["user"] == 6 and len(manifest["inputs"]) == 2
    meta = json.loads(by_answers(tmp_path / "o")[("2", "3")]["meta"])
    assert meta["chosen"]["author"] == "Bob Crust" and meta["question_url"] == "https://stackoverflow.com/questions/1"


def test_reddit_comment_cap_keeps_the_earliest(tmp_path):
    stats, _ = collect(tmp_path / "o", "pairs.max_per_question=null", "source.max_comments_per_post=2", source="reddit",
                       path=REDDIT)
    assert stats["replies"]["dropped"]["over_max_comments_per_post"] == 1  # c3, the latest of c2 (t50), c1 (t100), c3 (t200)
    assert set(by_answers(tmp_path / "o")) == {("c1", "c2")} and all(stats["identities"].values())


def test_dump_generator_compact_mode_reproduces_the_shipped_sample_and_forum_mode_is_long_tailed(tmp_path):
    """The sample in data_prep/sample is exactly what its README's command makes; --lengths forum adds a long length tail."""
    import statistics

    from make_stackexchange_dump import generate

    from data_prep.inputs import sevenzip_member_chunks

    generate(tmp_path / "compact", "synthetic.stackexchange.com", 3000, None, seed=0, tag_format="angle", n_users=400, pack=False)
    shipped = b"".join(sevenzip_member_chunks(ROOT / "data_prep" / "sample" / "synthetic.stackexchange.com.7z", "Posts.xml"))
    assert (tmp_path / "compact" / "Posts.xml").read_bytes() == shipped

    def body_lengths(directory):
        from lxml import etree

        return [len(r.get("Body")) for r in etree.parse(str(directory / "Posts.xml")).getroot() if r.get("PostTypeId") == "2"]

    generate(tmp_path / "forum", "x.stackexchange.com", 600, None, seed=1, tag_format="angle", n_users=50, pack=False,
             lengths="forum")
    generate(tmp_path / "short", "x.stackexchange.com", 600, None, seed=1, tag_format="angle", n_users=50, pack=False)
    forum, short = body_lengths(tmp_path / "forum"), body_lengths(tmp_path / "short")
    tail = lambda xs: sorted(xs)[int(0.99 * len(xs))] / statistics.median(xs)  # noqa: E731
    assert tail(forum) > 2 * tail(short) and max(forum) > 3 * max(short)


def test_atomic_json_writers_keep_the_old_file_on_failure_and_leave_no_temporary(tmp_path):
    from data_prep.records import clear_output_dir, write_json_atomic, write_jsonl_atomic

    path = tmp_path / "stats.json"
    write_json_atomic(path, {"b": "é", "a": 1}, indent=2, ensure_ascii=False)
    assert path.read_bytes() == '{\n  "b": "é",\n  "a": 1\n}\n'.encode()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    with pytest.raises(TypeError):
        write_jsonl_atomic(tmp_path / "rejects.jsonl", [{"a": 1}, {"b": object()}])
    assert json.loads(path.read_text()) == {"b": "é", "a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]
    write_jsonl_atomic(tmp_path / "rejects.jsonl", [{"a": 1}, {"b": 2}])
    assert (tmp_path / "rejects.jsonl").read_text() == '{"a": 1}\n{"b": 2}\n'
    (tmp_path / "train").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    clear_output_dir(tmp_path, ("train", "stats.json", "test"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rejects.jsonl"]


POOL_PHASES = """
import json
from data_prep.accounting import Stats
from data_prep.pipeline import run_phase, task_progress

def task(n):
    progress = task_progress()
    if n == 0:
        raise ValueError("bad record")
    for _ in range(n):
        progress(5 << 20, 1)  # past the batching threshold: every call goes through the queue
    progress.flush()
    return {"stats": Stats().state()}

rows, failures = [], 0
for _ in range(10):
    rows.append(run_phase("ok", task, [2000] * 6, 2, Stats())[1]["rows"])
    try:
        run_phase("failing", task, [20000, 0, 20000, 20000], 2, Stats())
    except ValueError:
        failures += 1
print(json.dumps({"rows": rows, "failures": failures}))
"""


def test_a_pool_phase_counts_every_workers_progress_and_the_process_exits_after_a_failed_task():
    """A phase on 2 workers whose tasks report progress to the last moment: every report reaches the bar (the manifest's
    phase rows), and after a task fails (the pool terminated while other workers were writing progress) the process still
    exits. With a multiprocessing.Queue a worker killed in mid-put held its write lock, and this process's own queue thread
    waited for it forever at exit: a collect with workers > 1 that failed, or raced its last report, never returned."""
    proc = subprocess.run([sys.executable, "-c", POOL_PHASES], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rows": [12000] * 10, "failures": 10}
