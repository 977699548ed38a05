"""The collector's fast paths give exactly what the plain computation gives: answers converted only when they land in a pair,
the numpy pair scan for long threads, the reused MinHash, the flat row checks."""
import json
import random
import re
from itertools import combinations
from pathlib import Path

import pytest
from lxml import etree

from data_prep.collect import run
from data_prep.entry import compose
from data_prep.records import read_pairs

# bodies a converter may turn into nothing, or that do not open with a plain paragraph, beside ordinary ones
ODD_BODIES = ["<p></p>", "<p> </p>", "<p>&nbsp;</p>", "<div></div>", "<p><img src='x.png'></p>", "<!-- only a comment -->",
              "<p hidden>hidden text</p>", "<script>var x = 1;</script>", "<div><p>in a div</p></div>",
              "<pre><code>print(1)</code></pre>", "<blockquote><p>quoted</p></blockquote>", "<p> leading space</p>",
              "<p><strong>bold</strong> first</p>", "<p>ok</p>", "<p>x</p>", "<p>é accented</p>", "<p>42 is the answer</p>"]


def _site(path: Path, seed: int = 0) -> Path:
    """A Posts.xml with long threads (tied and spread scores) whose answers include ODD_BODIES."""
    rng = random.Random(seed)
    rows, next_id = [], 1
    for q in range(30):
        qid = next_id
        next_id += 1
        rows.append({"Id": qid, "PostTypeId": "1", "Score": str(rng.randint(0, 9)), "Title": f"Question {q} about things",
                     "Body": f"<p>How do I do thing {q} with words like {' '.join(rng.sample(['a', 'b', 'c', 'd', 'e', 'f'], 4))}?</p>",
                     "OwnerUserId": str(rng.randint(1, 5)), "CreationDate": f"2020-01-{q % 28 + 1:02d}T00:00:00.000",
                     "ContentLicense": "CC BY-SA 4.0"})
        n = [0, 1, 2, 3, 5, 8, 17, 25][q % 8]
        for k in range(n):
            body = rng.choice(ODD_BODIES) if rng.random() < 0.4 else f"<p>Answer {k} to {q}: {'detail ' * rng.randint(1, 30)}</p>"
            rows.append({"Id": next_id, "PostTypeId": "2", "ParentId": qid, "Score": str(rng.randint(-2, 4)), "Body": body,
                         "OwnerUserId": str(rng.randint(1, 5)), "CreationDate": f"2020-02-{k % 28 + 1:02d}T00:00:00.000",
                         "ContentLicense": "CC BY-SA 4.0"})
            next_id += 1
    path.mkdir(parents=True, exist_ok=True)
    lines = [etree.tostring(etree.Element("row", {k: str(v) for k, v in r.items()}), encoding="unicode") for r in rows]
    (path / "Posts.xml").write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(f"  {x}" for x in lines)
                                    + "\n</posts>\n", encoding="utf-8")
    return path / "Posts.xml"


def _collect(out, posts, *overrides):
    run(compose("collect", [f"source.path={posts}", f"output_dir={out}", "split.test_fraction=0.3", *overrides]))
    stats = json.loads((out / "stats.json").read_text())
    stats.pop("store_bytes")
    tables = {s: read_pairs(out / s) for s in ("train", "test") if list((out / s).glob("*.parquet"))}
    return stats, tables, (out / "rejects.jsonl").read_text()


def test_surely_nonempty_never_claims_an_empty_conversion():
    from data_prep.html_markdown import html_to_markdown, surely_nonempty

    bodies = ODD_BODIES + ["<p>Hello</p>", "<p>a", "<p>1</p>", "<p>ü</p>", "<p>a<script>x</script></p>", "<P>Upper</P>",
                           " <p>space first</p>", "<p>\u00a0</p>", "<p>_</p>", "<p>*</p>"]
    for converter in ("html_to_markdown", "markdownify"):
        for body in bodies:
            if surely_nonempty(body):
                assert html_to_markdown(body, converter), (converter, body)
    assert surely_nonempty("<p>Hello</p>") and surely_nonempty("<p>42</p>") and surely_nonempty("<p>é</p>")
    assert not any(surely_nonempty(b) for b in ["<p></p>", "<p> x</p>", "<p>&nbsp;</p>", "<p hidden>x</p>", "<div>x</div>", ""])


@pytest.mark.parametrize("overrides", [[], ["pairs.max_per_question=null"], ["pairs.min_reply_chars=30"],
                                       ["pairs.max_reply_chars=60", "pairs.max_per_question=3"],
                                       ["pairs.score_rule=stackllama"]])
def test_converting_on_first_use_gives_the_output_of_converting_everything(tmp_path, monkeypatch, overrides):
    """The same shards, counts and rejects as when every answer is converted up front (the test that nothing is known to be
    non-empty forces it); and fewer conversions when the length bounds allow it."""
    import data_prep.stackexchange as se

    posts = _site(tmp_path / "site.stackexchange.com")
    calls = {"n": 0}
    convert = se.html_to_markdown

    def counting(html, converter="html_to_markdown"):
        calls["n"] += 1
        return convert(html, converter)

    monkeypatch.setattr(se, "html_to_markdown", counting)
    lazy = _collect(tmp_path / "lazy", posts, *overrides)
    lazy_calls, calls["n"] = calls["n"], 0
    monkeypatch.setattr(se, "surely_nonempty", lambda html: False)
    eager = _collect(tmp_path / "eager", posts, *overrides)
    assert lazy[0] == eager[0] and lazy[2] == eager[2]
    assert lazy[1].keys() == eager[1].keys() and all(lazy[1][s].equals(eager[1][s]) for s in lazy[1])
    assert lazy[0]["pairs"]["sampled"] > 10 and lazy[0]["replies"]["dropped"].get("empty_after_conversion", 0) > 0
    assert lazy_calls <= calls["n"]
    if not overrides or overrides == ["pairs.score_rule=stackllama"]:  # one pair per thread, no length bounds to check
        assert lazy_calls < 0.8 * calls["n"]


def test_numpy_pair_scan_matches_the_loop():
    from data_prep.pairing import _candidates_loop, _candidates_numpy

    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(2, 40)
        scores = [float(rng.choice([rng.randint(-3, 6), rng.randint(-3, 6) + 0.5])) for _ in range(n)]
        gap = rng.choice([1.0, 0.5, 2.0, 3.0])
        loop, equal, below, earlier = _candidates_loop(scores, None, gap, None)
        assert (loop, equal, below) == _candidates_numpy(scores, gap) and earlier == 0
        # and against the definition, pair by pair
        want = [((i, j) if scores[i] > scores[j] else (j, i)) for i, j in combinations(range(n), 2)
                if scores[i] != scores[j] and abs(scores[i] - scores[j]) >= gap]
        assert loop == want


def test_signature_is_datasketchs_minhash_of_the_shingle_set():
    from datasketch import MinHash
    from xxhash import xxh32_intdigest
    import numpy as np

    from data_prep.near_dedup import signature

    texts = ["", "one", "a b c d e", "How do I parse JSON in Python? I tried json.loads but it fails on big files.",
             "Ünïcode wörds and 漢字 mixed with ascii words for the shingles test " * 3]
    for text in texts + texts[::-1]:  # the per-process MinHash is cleared between texts: order does not matter
        tokens = re.findall(r"\w+", text.lower())
        shingles = {" ".join(tokens[i:i + 5]).encode() for i in range(max(1, len(tokens) - 4))}
        m = MinHash(num_perm=64, seed=1, hashfunc=xxh32_intdigest)
        m.update_batch(sorted(shingles))
        assert signature(text, 64, 5) == m.hashvalues.astype(np.uint64).tobytes()


@pytest.mark.parametrize("attrs, reason", [
    ({"PostTypeId": "1", "Score": "1", "Body": "<p>b</p>", "Title": "t"}, "missing_Id"),
    ({"Id": "x", "PostTypeId": "1", "Score": "1", "Body": "<p>b</p>", "Title": "t"}, "bad_Id"),
    ({"Id": "1", "Score": "1", "Body": "<p>b</p>"}, "missing_PostTypeId"),
    ({"Id": "1", "PostTypeId": "q", "Score": "1", "Body": "<p>b</p>"}, "bad_PostTypeId"),
    ({"Id": "1", "PostTypeId": "5", "Score": "1", "Body": "<p>b</p>"}, "other_post_type"),
    ({"Id": "1", "PostTypeId": "2", "Body": "<p>b</p>", "ParentId": "1"}, "missing_Score"),
    ({"Id": "1", "PostTypeId": "2", "Score": "", "Body": "<p>b</p>", "ParentId": "1"}, "bad_Score"),
    ({"Id": "1", "PostTypeId": "2", "Score": "1", "Body": " \n\u3000", "ParentId": "1"}, "empty_body"),
    ({"Id": "1", "PostTypeId": "2", "Score": "1", "ParentId": "1"}, "empty_body"),
    ({"Id": "1", "PostTypeId": "2", "Score": "1", "Body": "<p>a\x85b</p>", "ParentId": "1"}, "invalid_characters"),
    ({"Id": "1", "PostTypeId": "1", "Score": "1", "Body": "<p>b</p>", "Title": "bad \ufffd"}, "invalid_characters"),
    ({"Id": "1", "PostTypeId": "1", "Score": "1", "Body": "<p>b</p>", "Title": "  "}, "missing_Title"),
    ({"Id": "1", "PostTypeId": "1", "Score": "1", "Body": "<p>b</p>"}, "missing_Title"),
    ({"Id": "1", "PostTypeId": "1", "Score": "1", "Body": "<p>b</p>", "Title": "t", "AcceptedAnswerId": "z"}, "bad_attribute"),
    ({"Id": "1", "PostTypeId": "2", "Score": "1", "Body": "<p>b</p>", "OwnerUserId": "me", "ParentId": "1"}, "bad_attribute"),
    ({"Id": "1", "PostTypeId": "2", "Score": "1", "Body": "<p>b</p>"}, "missing_ParentId"),
    ({"Id": " 7 ", "PostTypeId": "2", "Score": "-3", "Body": "<p>b</p>", "ParentId": "1", "CommunityOwnedDate": ""}, None),
])
def test_row_checks_name_the_first_failing_rule(attrs, reason):
    from data_prep.stackexchange import _check_post

    got, fields = _check_post(attrs)
    assert got == reason
    if reason is None:  # an answer: (2, id, score, parent, body, owner, owner name, created, wiki, license)
        assert fields == (2, 7, -3, 1, "<p>b</p>", None, None, None, True, None)
    if reason == "bad_attribute":
        assert "invalid literal for int()" in fields[0]
