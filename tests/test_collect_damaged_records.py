"""Every reader of worldpm collect (Stack Exchange .7z and bare XML, Reddit .zst) on dumps with repeated, cut-short and
non-UTF-8 records, as real dumps have them: each damaged record is dropped with its reason and line, every row is accounted
for, and the pairs are exactly those of the undamaged dump. A damaged end of file (the file itself cut short) is a one-line
error naming the file and the position, with nothing marked complete."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from data_prep.collect import run
from data_prep.entry import compose
from data_prep.errors import CollectError
from data_prep.records import read_pairs

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "collect"
SITE = "cooking.stackexchange.com"
sys.path.insert(0, str(FIX))

from make_fixtures import reddit_rows, write_zst  # noqa: E402  (the fixture generator: the real formats)


def collect(out: Path, source: str, path: Path, *overrides: str) -> dict:
    run(compose("collect", [f"source={source}", f"source.path={path}", f"output_dir={out}", "pairs.max_per_question=null",
                            "split.test_fraction=0", *overrides]))
    return json.loads((out / "stats.json").read_text())


def pairs(out: Path) -> dict:
    return {r["id"]: (r["prompt"], r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"])
            for r in read_pairs(out / "train").to_pylist()}


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def line_of(lines: list[bytes], needle: bytes) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


# ---------------------------------------------------------------------------------------------------------- Stack Exchange
def damaged_site(directory: Path) -> tuple[Path, dict]:
    """The fixture site with, in Posts.xml, a repeated line, a row cut short mid-attribute and a row holding Latin-1 bytes;
    in Users.xml and Votes.xml, a repeated line each. Returns the site directory and the (1-based) lines of the damage."""
    site = directory / SITE
    site.mkdir(parents=True)
    lines = {}
    for table, damage in (
        ("Posts", lambda rows: [(rows[line_of(rows, b'Id="3"')], "repeat"),
                                (b'  <row Id="40" PostTypeId="2" ParentId="22" Score="1" Body="&lt;p&gt;cut sh\r', "cut"),
                                (b'  <row Id="41" PostTypeId="2" ParentId="22" Score="6" Body="caf\xe9 cr\xe8me" />\r', "latin1")]),
        ("Users", lambda rows: [(rows[line_of(rows, b'Id="12"')], "repeat")]),
        ("Votes", lambda rows: [(rows[line_of(rows, b'PostId="3" VoteTypeId="2"')], "repeat")]),
    ):
        rows = (FIX / SITE / f"{table}.xml").read_bytes().split(b"\n")
        at = len(rows) - 2  # before the closing tag
        for offset, (text, name) in enumerate(damage(rows)):
            rows.insert(at + offset, text)
            lines[(table, name)] = at + offset + 1
        (site / f"{table}.xml").write_bytes(b"\n".join(rows))
    return site, lines


def as_7z(site: Path, archive: Path) -> Path:
    import py7zr

    with py7zr.SevenZipFile(archive, "w") as z:
        for name in ("Posts.xml", "Users.xml", "Votes.xml"):
            z.write(site / name, name)
    return archive


@pytest.fixture(scope="module")
def clean_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean_site") / "o"
    return out, collect(out, "stackexchange", FIX / SITE, "source.read_votes=true")


@pytest.mark.parametrize("packaging", ["xml", "7z"])
def test_stack_exchange_repeated_cut_and_non_utf8_records_are_each_dropped_and_counted(tmp_path, clean_site, packaging):
    site, lines = damaged_site(tmp_path / "dump")
    path = as_7z(site, tmp_path / f"{SITE}.7z") if packaging == "7z" else site
    out = tmp_path / "o"
    stats = collect(out, "stackexchange", path, "source.read_votes=true")
    clean_out, clean = clean_site
    assert stats["all_accounted"] and all(stats["identities"].values())
    posts, clean_posts = stats["rows"]["Posts"], clean["rows"]["Posts"]
    assert posts["read"] == clean_posts["read"] + 3
    assert posts["dropped"]["duplicate_Id"] == clean_posts["dropped"]["duplicate_Id"] + 1
    assert posts["dropped"]["malformed_row"] == clean_posts["dropped"]["malformed_row"] + 2  # cut short; not UTF-8
    assert (posts["question"], posts["answer"]) == (clean_posts["question"], clean_posts["answer"])
    assert stats["rows"]["Users"]["read"] == clean["rows"]["Users"]["read"] + 1
    assert stats["rows"]["Users"]["user"] == clean["rows"]["Users"]["user"]
    assert stats["rows"]["Users"]["dropped"]["duplicate_Id"] == 1
    assert stats["rows"]["Votes"]["vote"] == clean["rows"]["Votes"]["vote"]
    assert stats["rows"]["Votes"]["dropped"] == {**clean["rows"]["Votes"]["dropped"], "duplicate_Id": 1}
    # the damage changed nothing downstream: the same pairs, the same votes (a repeated vote is not counted twice)
    assert pairs(out) == pairs(clean_out)
    upvotes = lambda o: {r["id"]: json.loads(r["meta"])["chosen"].get("upvotes") for r in read_pairs(o / "train").to_pylist()}  # noqa: E731
    assert upvotes(out) == upvotes(clean_out) and any(v for v in upvotes(out).values())
    by_reason = {}
    for r in rejects(out):
        by_reason.setdefault((r["block"], r["reason"]), []).append(r)
    assert lines[("Votes", "repeat")] in [r["line"] for r in by_reason[("rows.Votes", "duplicate_Id")]]
    malformed = {r["line"] for r in by_reason[("rows.Posts", "malformed_row")]}
    assert {lines[("Posts", "cut")], lines[("Posts", "latin1")]} <= malformed
    assert all("Posts.xml" in r["file"] for r in by_reason[("rows.Posts", "malformed_row")])


@pytest.mark.parametrize("packaging", ["xml", "7z"])
def test_stack_exchange_file_cut_inside_its_last_record_is_a_one_line_error(tmp_path, packaging):
    site = tmp_path / "dump" / SITE
    shutil.copytree(FIX / SITE, site)
    text = (site / "Posts.xml").read_bytes()
    cut = text[: text.rindex(b"<row") + 30]
    (site / "Posts.xml").write_bytes(cut)
    path = as_7z(site, tmp_path / f"{SITE}.7z") if packaging == "7z" else site
    with pytest.raises(CollectError) as err:
        collect(tmp_path / "o", "stackexchange", path)
    message, last_line = str(err.value), cut.count(b"\n") + 1
    assert "\n" not in message and "Posts.xml" in message and f"line {last_line}" in message and "truncated" in message
    assert not (tmp_path / "o" / "manifest.json").exists() and not (tmp_path / "o" / "stats.json").exists()


# ---------------------------------------------------------------------------------------------------------- Reddit
def damaged_reddit(directory: Path) -> dict:
    """The fixture month with repeated lines (a submission, two comments, one of them again in next month's file), a line cut
    short mid-record, a record holding Latin-1 bytes, and a last record cut short with no newline."""
    subs, coms = reddit_rows()
    directory.mkdir(parents=True)
    sub_lines = [json.dumps(s) if not isinstance(s, str) else s for s in subs]
    com_lines = [json.dumps(c) for c in coms]
    p1 = next(line for line in sub_lines if '"id": "p1"' in line)
    c1 = next(line for line in com_lines if '"id": "c1"' in line)
    c3 = next(line for line in com_lines if '"id": "c3"' in line)
    latin1 = json.dumps({"id": "c30", "link_id": "t3_p1", "parent_id": "t3_p1", "author": "k", "body": "CAFE", "score": 25,
                         "created_utc": 1600000900, "subreddit": "AskCulinary"}).replace("CAFE", "caf\udce9")
    sub_lines += [p1]
    com_lines[3:3] = [c1]
    com_lines += [c3[:40], latin1, c1]
    write_zst(directory / "RS_2023-01.zst", sub_lines)
    import zstandard

    raw = b"".join(line.encode("utf-8", "surrogateescape") + b"\n" for line in com_lines) + c3[:25].encode()
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=29)
    (directory / "RC_2023-01.zst").write_bytes(zstandard.ZstdCompressor(compression_params=params).compress(raw))
    write_zst(directory / "RC_2023-02.zst", [coms[1]])  # c2, already in January's file
    return {"repeated_c1": [4, len(com_lines)], "cut": len(com_lines) - 2, "latin1": len(com_lines) - 1,
            "cut_last": len(com_lines) + 1, "repeated_p1": len(sub_lines)}


def test_reddit_repeated_cut_and_non_utf8_lines_are_each_dropped_and_counted(tmp_path):
    clean = collect(tmp_path / "clean", "reddit", FIX / "reddit")
    lines = damaged_reddit(tmp_path / "dump")
    out = tmp_path / "o"
    stats = collect(out, "reddit", tmp_path / "dump")  # before the fix: "collect bug: counts do not add up"
    assert stats["all_accounted"] and all(stats["identities"].values())
    subs, coms = stats["rows"]["submissions"], stats["rows"]["comments"]
    assert subs["read"] == clean["rows"]["submissions"]["read"] + 1 and subs["dropped"]["duplicate_id"] == 1
    assert subs["submission"] == clean["rows"]["submissions"]["submission"]
    assert coms["read"] == clean["rows"]["comments"]["read"] + 6
    assert coms["comment"] == clean["rows"]["comments"]["comment"]
    assert coms["dropped"]["duplicate_id"] == 3  # c1 twice in its own file, c2 again in the next month's
    assert coms["dropped"]["bad_json"] == clean["rows"]["comments"]["dropped"]["bad_json"] + 3  # cut, Latin-1, cut last
    assert pairs(out) == pairs(tmp_path / "clean")
    found = {}
    for r in rejects(out):
        found.setdefault((r["block"], r["reason"]), []).append(r)
    dup_lines = sorted(r["line"] for r in found[("rows.comments", "duplicate_id")] if r.get("line"))
    assert dup_lines == lines["repeated_c1"]
    assert all(r["id"] == "c1" and r["first_line"] == 1 for r in found[("rows.comments", "duplicate_id")] if r.get("line"))
    assert [r["line"] for r in found[("rows.submissions", "duplicate_id")]] == [lines["repeated_p1"]]
    bad = {r["line"]: r for r in found[("rows.comments", "bad_json")] if "RC_2023-01" in r["file"]}
    assert {lines["cut"], lines["latin1"], lines["cut_last"]} <= set(bad)
    assert "utf-8" in bad[lines["latin1"]]["detail"].lower()


def test_reddit_file_cut_inside_its_compressed_stream_is_a_one_line_error(tmp_path):
    d = tmp_path / "dump"
    shutil.copytree(FIX / "reddit", d)
    data = (d / "RS_2023-01.zst").read_bytes()
    (d / "RS_2023-01.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(CollectError) as err:
        collect(tmp_path / "o", "reddit", d)
    message = str(err.value)
    assert "\n" not in message and str(d / "RS_2023-01.zst") in message and "byte" in message
    assert not (tmp_path / "o" / "manifest.json").exists() and not (tmp_path / "o" / "stats.json").exists()
