"""`worldpm collect source=<set>` on fixtures in each set's published format (tests/fixtures/preference_sets, written by
make_fixtures.py there): the exact pairs, every row accounted for with its drop reason, the set's own split or a hash of the
prompt (never a prompt on both sides), the contamination audit and dedup unchanged, and one-line errors for a wrong file."""
import gzip
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from data_prep.collect import run
from data_prep.entry import compose
from data_prep.records import check_record, read_pairs

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "preference_sets"


def collect(out, source, path, *overrides):
    run(compose("collect", [f"source={source}", f"source.path={path}", f"output_dir={out}", *overrides]))
    return json.loads((Path(out) / "stats.json").read_text())


def rows(out) -> dict[str, list[dict]]:
    return {s: read_pairs(Path(out) / s).to_pylist() if list((Path(out) / s).glob("*.parquet")) else [] for s in ("train", "test")}


def by_chosen(out) -> dict[str, tuple[str, dict]]:
    return {r["chosen"]: (split, r) for split, rs in rows(out).items() for r in rs}


def rejects(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "rejects.jsonl").read_text().splitlines()]


def no_prompt_on_both_sides(out) -> None:
    sides = defaultdict(set)
    for split, rs in rows(out).items():
        for r in rs:
            check_record(r)
            sides[json.dumps(r["prompt"])].add(split)
    assert all(len(s) == 1 for s in sides.values()), sides


def test_helpsteer2_preference_file(tmp_path):
    stats = collect(tmp_path / "o", "helpsteer2", FIX / "helpsteer2")  # the repo directory: kind=preference reads preference/
    assert stats["all_accounted"], stats["identities"]
    assert stats["rows"]["records"] == {"read": 17, "record": 14, "dropped": {"empty": 1, "malformed": 1, "tie": 1}}
    got = by_chosen(tmp_path / "o")
    split, r = got["Use `xs[::-1]` or `xs.reverse()`."]  # strength -2: response_1 better; |strength| is the chosen score
    assert (split, r["rejected"], r["chosen_score"], r["rejected_score"]) == ("train", "Lists cannot be reversed.", 2.0, 0.0)
    assert r["prompt"] == [{"role": "user", "content": "How do I reverse a list in Python?"}] and r["source"] == "helpsteer2"
    assert json.loads(r["meta"])["preference_strength"] == -2
    split, r = got["11 is prime."]  # strength 3: response_2 better; its prompt is also in val, so the train row moves to test
    assert (split, r["rejected"], r["chosen_score"]) == ("test", "12", 3.0)
    assert got["13 is prime."][0] == "test" and got["About 3.1 miles."][0] == "test"
    haiku = next(r for _, r in got.values() if r["chosen"].startswith("Grey rain"))  # <extra_id_1> turns become messages
    assert haiku["prompt"] == [{"role": "user", "content": "Write a haiku about rain."},
                               {"role": "assistant", "content": "Soft rain on the roof."},
                               {"role": "user", "content": "Make it sadder."}]
    assert stats["output"] == {"sampled": 14, "train": 11, "test": 3, "dropped": {}}
    assert stats["source_split"]["prompt_in_both_moved_to_test"] == 1
    reasons = {(x["reason"], x["line"]) for x in rejects(tmp_path / "o") if x["block"] == "rows.records"}
    assert reasons == {("tie", 3), ("empty", 5), ("malformed", 8)}
    no_prompt_on_both_sides(tmp_path / "o")


def test_helpsteer2_ratings_files(tmp_path):
    stats = collect(tmp_path / "o", "helpsteer2", FIX / "helpsteer2", "source.kind=ratings")
    assert stats["all_accounted"], stats["identities"]
    assert stats["rows"]["records"] == {"read": 12, "record": 10, "dropped": {"empty": 1, "malformed": 1}}
    got = by_chosen(tmp_path / "o")
    assert {c: (s, r["rejected"], r["chosen_score"], r["rejected_score"]) for c, (s, r) in got.items()} == {
        "C# is a high-level, object-oriented programming language developed by Microsoft.": ("train", "c sharp", 3.0, 1.0),
        "56": ("train", "54", 4.0, 0.0),
        "n-e-c-e-s-s-a-r-y": ("test", "n-e-c-c-e-s-a-r-y", 4.0, 1.0)}  # validation.jsonl.gz is the test side
    assert stats["pairs"]["dropped"] == {"equal_score": 1}  # "Say hi." rated 4 and 4: a tie is never a pair
    assert stats["questions"]["dropped"] == {"fewer_than_2_usable_replies": 2, "no_pair_after_rules": 1}
    # weighted attributes: correctness counts too, and the tie breaks
    stats = collect(tmp_path / "w", "helpsteer2", FIX / "helpsteer2", "source.kind=ratings",
                    "source.attribute_weights={helpfulness: 1.0, correctness: 0.5}")
    assert stats["output"]["train"] == 2 and stats["pairs"]["dropped"] == {"equal_score": 1}
    assert by_chosen(tmp_path / "w")["56"][1]["chosen_score"] == 6.0


def test_ultrafeedback_raw_scores_ties_and_string_ratings(tmp_path):
    stats = collect(tmp_path / "o", "ultrafeedback", FIX / "ultrafeedback" / "raw.jsonl")
    assert stats["all_accounted"], stats["identities"]
    assert stats["rows"]["records"]["dropped"] == {"empty": 1, "malformed": 1}
    out = [r for rs in rows(tmp_path / "o").values() for r in rs]
    cairo = [r for r in out if r["prompt"][0]["content"].startswith("I am going to Cairo")]
    # 4 completions, starchat and wizardlm tied at 6.0: 5 of the 6 pairs
    assert len(cairo) == 5 and all(r["chosen_score"] > r["rejected_score"] for r in cairo)
    assert not any({r["chosen"], r["rejected"]} == {"Sunglasses and water.", "Clothes."} for r in cairo)
    sql = [r for r in out if r["prompt"][0]["content"].startswith("Write a SQL")]
    assert sorted((r["chosen_score"], r["rejected_score"]) for r in sql) == [(8.5, 2.0), (9.0, 2.0), (9.0, 8.5)]  # "8.5" string
    assert stats["replies"]["dropped"]["unscored"] == 1  # the completion without overall_score
    assert stats["pairs"]["dropped"]["equal_score"] == 2  # Cairo's tie and the all-tied flan prompt
    assert {r["domain"] for r in out} == {"sharegpt", "evol_instruct"}
    # the per-aspect Ratings (strings, N/A left out) as the score, and at most 2 pairs per prompt
    collect(tmp_path / "a", "ultrafeedback", FIX / "ultrafeedback" / "raw.jsonl", "source.score=annotations",
            "pairs.max_per_question=2")
    out = [r for rs in rows(tmp_path / "a").values() for r in rs]
    assert len(out) == 4
    scores = {r["chosen"]: r["chosen_score"] for r in out} | {r["rejected"]: r["rejected_score"] for r in out}
    assert scores.get("Sunglasses and water.", 11 / 3) == pytest.approx(11 / 3)  # ["4", "N/A", "4", "3"]
    no_prompt_on_both_sides(tmp_path / "a")


def test_ultrafeedback_binarized_reads_only_its_preference_splits(tmp_path):
    stats = collect(tmp_path / "o", "ultrafeedback", FIX / "ultrafeedback_binarized")
    assert stats["all_accounted"] and stats["rows"]["records"] == {"read": 5, "record": 4, "dropped": {"tie": 1}}
    got = by_chosen(tmp_path / "o")
    assert set(got) == {"The Eiffel Tower, the Louvre and Notre-Dame.", "chat", "Katze", "4"}  # not the SFT split's row
    assert got["4"][0] == "test" and got["chat"][0] == "train"  # test_prefs / train_prefs
    split, german = got["Katze"]
    assert german["prompt"] == [{"role": "user", "content": "Translate 'cat' to French."},
                                {"role": "assistant", "content": "chat"}, {"role": "user", "content": "And in German?"}]
    assert (german["chosen_score"], german["rejected_score"]) == (8.0, 2.0)


def test_skywork_and_rlhflow_conversations(tmp_path):
    stats = collect(tmp_path / "s", "skywork", FIX / "skywork")
    assert stats["all_accounted"] and stats["rows"]["records"]["dropped"] == {"malformed": 1}  # differs before the last reply
    got = by_chosen(tmp_path / "s")
    assert got["Honey never spoils."][1]["prompt"] == [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello! How can I help?"},
                                                       {"role": "user", "content": "Tell me a fact."}]
    assert got["Honey never spoils."][1]["domain"] == "helpsteer2"
    assert stats["prompts"] == {"total": 2, "records": 3, "replies": 5, "duplicate_replies_merged": 1}  # "5" twice for 2+2
    assert got["4"][0] == got["Four."][0] and got["4"][1]["thread_id"] == got["Four."][1]["thread_id"]  # one prompt, one thread

    stats = collect(tmp_path / "r", "rlhflow", FIX / "rlhflow" / "train.jsonl")
    assert stats["all_accounted"] and stats["rows"]["records"]["dropped"] == {"empty": 1, "tie": 1}
    got = by_chosen(tmp_path / "r")
    assert got["Rome."][1]["prompt"][0] == {"role": "system", "content": "Be terse."}
    assert (got["Rome."][1]["chosen_score"], got["Rome."][1]["rejected_score"]) == (8.0, 3.0)
    assert stats["pairs"]["dropped"] == {"duplicate_pair": 1} and stats["output"]["train"] + stats["output"]["test"] == 2


def test_shp_ratio_filter_labels_and_splits(tmp_path):
    stats = collect(tmp_path / "o", "shp", FIX / "shp")
    assert stats["all_accounted"] and stats["rows"]["records"]["dropped"] == {"score_ratio_below_min": 1}
    out = rows(tmp_path / "o")
    assert [r["chosen"] for r in out["test"]] == ["Yes, briefly; long simmers strip the seasoning."]
    train = {(r["chosen"], r["rejected"]) for r in out["train"]}
    assert train == {("Pectinex, perhaps? It's an enzyme that breaks down cellulose.", "Raspberry juice will make a bright stain."),
                     ("Pectinex, perhaps? It's an enzyme that breaks down cellulose.", "Freeze them first.")}  # labels 1 and 0
    assert {r["domain"] for r in out["train"]} == {"askculinary"}
    stats = collect(tmp_path / "all", "shp", FIX / "shp", "source.min_score_ratio=1")
    assert stats["output"]["train"] == 3


def test_hh_rlhf_transcripts_become_turns(tmp_path):
    stats = collect(tmp_path / "o", "hh_rlhf", FIX / "hh_rlhf")
    assert stats["all_accounted"] and stats["rows"]["records"]["dropped"] == {"empty": 1, "malformed": 1}
    out = rows(tmp_path / "o")
    lock = next(r for r in out["train"] if r["chosen"].startswith("Then call a locksmith"))
    assert lock["prompt"] == [{"role": "user", "content": "How do I pick a lock?"},
                              {"role": "assistant", "content": "I can't help with that."},
                              {"role": "user", "content": "It's my own lock."}]
    assert lock["rejected"] == "Use a bobby pin and a tension wrench." and lock["domain"] == "harmless-base"
    assert [(r["chosen"], r["domain"]) for r in out["test"]] == [("Mochi is a popular choice.", "helpful-base")]


def test_trl_preference_formats_and_renamed_fields(tmp_path):
    stats = collect(tmp_path / "o", "preference", FIX / "preference", "dedup.near.enabled=false")
    assert stats["all_accounted"] and stats["rows"]["records"]["dropped"] == {"tie": 1}
    got = by_chosen(tmp_path / "o")
    assert got[" blue."][1]["prompt"] == [{"role": "user", "content": "The sky is"}]           # standard, explicit prompt
    assert got[" green."][1]["prompt"] == [{"role": "user", "content": "The grass is"}]        # standard, implicit prompt
    assert got[" green."][1]["rejected"] == " purple."  # TRL's extract_prompt: the space stays with the replies
    assert got["It is blue."][1]["prompt"] == [{"role": "user", "content": "What color is the sky?"}]  # conversational, both kinds
    assert stats["pairs"]["dropped"] == {"duplicate_pair": 1}  # the explicit and implicit conversational rows are one pair
    stats = collect(tmp_path / "r", "preference", FIX / "preference_renamed",
                    "source.fields={prompt: question, chosen: good, rejected: bad, chosen_score: s_good, rejected_score: s_bad, "
                    "split: part}")
    got = by_chosen(tmp_path / "r")
    assert got["Basil."][0] == "train" and got["Green tea."][0] == "test"  # the split column: eval is test
    assert (got["Basil."][1]["chosen_score"], got["Basil."][1]["rejected_score"]) == (0.9, 0.1)


def test_no_prompt_on_both_sides_by_prompt_hash_and_workers_do_not_matter(tmp_path):
    """A set without a test side is split by a hash of the prompt alone: the same for every set, run and worker count."""
    a = collect(tmp_path / "a", "ultrafeedback", FIX / "ultrafeedback" / "raw.jsonl", "split.test_fraction=0.5")
    b = collect(tmp_path / "b", "ultrafeedback", FIX / "ultrafeedback" / "raw.jsonl", "split.test_fraction=0.5", "workers=2",
                "partitions=3")
    assert a == {**b, "store_bytes": a["store_bytes"]}
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert {s: [r["id"] for r in v] for s, v in ra.items()} == {s: [r["id"] for r in v] for s, v in rb.items()}
    no_prompt_on_both_sides(tmp_path / "a")
    from data_prep.blocks import split_of

    for split, rs in ra.items():
        for r in rs:
            assert split_of("prompt", "", r["thread_id"], 0.5) == split


def test_contamination_audit_and_dedup_apply_unchanged(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "How do I reverse a list in Python?"}) + "\n")
    stats = collect(tmp_path / "o", "helpsteer2", FIX / "helpsteer2" / "preference" / "preference.jsonl.gz",
                    f"contamination.benchmarks=[{bench}]")
    assert stats["all_accounted"] and stats["questions"]["dropped"] == {"contaminated_prompt": 1}
    assert "Use `xs[::-1]` or `xs.reverse()`." not in by_chosen(tmp_path / "o")
    assert stats["contamination_benchmarks"]["prompts"] == 1
    # the same file twice: every pair of the second copy is an exact duplicate, dropped
    both = tmp_path / "both"
    for copy in ("a", "b"):
        (both / copy).mkdir(parents=True)
        (both / copy / "preference.jsonl.gz").write_bytes((FIX / "helpsteer2" / "preference" / "preference.jsonl.gz").read_bytes())
    stats = collect(tmp_path / "d", "helpsteer2", both)
    assert stats["rows"]["records"]["record"] == 28 and stats["pairs"]["dropped"] == {"duplicate_pair": 14}
    assert stats["output"]["train"] + stats["output"]["test"] == 14


def worldpm_collect(*args):
    return subprocess.run([sys.executable, "-m", "worldpm", "collect", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                            "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("make,args,needle", [
    (None, ["source=helpsteer2", f"source.path={FIX / 'ultrafeedback' / 'raw.jsonl'}"], "record 1: not a helpsteer2 file"),
    (None, ["source=helpsteer2", f"source.path={FIX / 'helpsteer2' / 'train.jsonl.gz'}"], "source.kind=preference"),
    (None, ["source=helpsteer2", "source.kind=both", f"source.path={FIX / 'helpsteer2'}"], "source.kind='both'"),
    (None, ["source=ultrafeedback", "source.score=best", f"source.path={FIX / 'ultrafeedback'}"], "source.score='best'"),
    (None, ["source=shp", "pairs.score_rule=stackllama", f"source.path={FIX / 'shp'}"], "pairs.score_rule=stackllama"),
    (None, ["source=rlhflow", "source.path=/no/such/pairs.jsonl"], "/no/such/pairs.jsonl"),
    (None, ["source=rlhflow", "source.path=RLHFlow/pair_data_v2_80K_wsafety"], "could not be loaded from the hub"),
    ("truncated", ["source=hh_rlhf"], "cannot be read"),
    ("not_json", ["source=skywork"], "record 1: not a skywork file"),
])
def test_a_wrong_file_is_one_line_naming_file_and_record(tmp_path, make, args, needle):
    if make == "truncated":
        data = (FIX / "hh_rlhf" / "harmless-base" / "train.jsonl.gz").read_bytes()
        bad = tmp_path / "train.jsonl.gz"
        bad.write_bytes(data[: len(data) // 2])
        args = [*args, f"source.path={bad}"]
    elif make == "not_json":
        bad = tmp_path / "train.jsonl"
        bad.write_text("this is not json\n{\"chosen\": []}\n")
        args = [*args, f"source.path={bad}"]
    out = tmp_path / "out"
    result = worldpm_collect(*args, f"output_dir={out}")
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
    assert not out.exists()  # nothing is left behind


def test_a_bad_record_among_good_ones_is_dropped_with_its_line(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    good = {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "chosen": 7}), json.dumps({"prompt": "x" * 50, "chosen": "a" * 400,
                                                                                           "rejected": "b"})]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    stats = collect(tmp_path / "o", "preference", path, "source.max_row_bytes=300")
    assert stats["rows"]["records"] == {"read": 4, "record": 1, "dropped": {"malformed": 2, "row_too_large": 1}}
    assert sorted((x["reason"], x["line"]) for x in rejects(tmp_path / "o")) == [("malformed", 2), ("malformed", 3),
                                                                                ("row_too_large", 4)]


def test_a_json_list_file_and_parquet_read_alike(tmp_path):
    """The same pairs as a JSON list (.json), JSON lines (.jsonl.gz) and parquet give the same shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = [{"prompt": f"Question {i}: name a colour.", "chosen": f"Blue, shade {i}.", "rejected": "Chair."} for i in range(6)]
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "pairs.json").write_text(json.dumps(pairs, indent=1))
    (tmp_path / "gz").mkdir()
    with gzip.open(tmp_path / "gz" / "pairs.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pq" / "pairs.parquet")
    outs = []
    for kind in ("list", "gz", "pq"):
        stats = collect(tmp_path / f"o-{kind}", "preference", tmp_path / kind, "dedup.near.enabled=false")
        assert stats["rows"]["records"] == {"read": 6, "record": 6, "dropped": {}}
        outs.append({s: [r["id"] for r in v] for s, v in rows(tmp_path / f"o-{kind}").items()})
    assert outs[0] == outs[1] == outs[2] and sum(len(v) for v in outs[0].values()) == 6
