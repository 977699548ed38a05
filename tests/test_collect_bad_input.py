"""Bad and hostile input to worldpm collect: a one-line error naming the file and position and a non-zero exit for a truncated or
corrupt archive / XML / zstd file (and nothing marked complete), rows refused with a reason, and no harm from XXE, billion laughs,
absurd rows or archive members whose names try to escape."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.errors import CollectError
from data_prep.xml_rows import BadRow, iter_rows

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "collect"
SITE_7Z = FIX / "cooking.stackexchange.com.7z"
POSTS = FIX / "cooking.stackexchange.com" / "Posts.xml"


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "worldpm", "collect", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_failure(result, out: Path, *needles):
    """Exactly one line besides the log lines ([HH:MM:SS INFO ...]) and progress bars, and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not re.match(r"^\[\d\d:\d\d:\d\d (INFO|WARNING) ", line)
             and not line.startswith("collect: ")]
    assert "Traceback" not in result.stderr
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("worldpm collect: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (out / "manifest.json").exists() and not (out / "stats.json").exists()
    assert not list(out.glob("train/*.parquet")) and not list(out.glob("test/*.parquet"))


def test_truncated_7z_is_a_one_line_error(tmp_path):
    data = SITE_7Z.read_bytes()
    bad = tmp_path / "cooking.stackexchange.com.7z"
    bad.write_bytes(data[: len(data) // 2])
    result = cli(f"source.path={bad}", f"output_dir={tmp_path / 'o'}")
    assert_one_line_failure(result, tmp_path / "o", str(bad))


def test_corrupt_7z_payload_is_a_one_line_error_naming_the_member(tmp_path):
    data = bytearray(SITE_7Z.read_bytes())
    for i in range(64, 400):  # damage the packed stream (the header at the end stays readable)
        data[i] ^= 0x5A
    bad = tmp_path / "cooking.stackexchange.com.7z"
    bad.write_bytes(bytes(data))
    result = cli(f"source.path={bad}", f"output_dir={tmp_path / 'o'}", "workers=2")  # the error crosses the worker pool
    assert_one_line_failure(result, tmp_path / "o", str(bad))
    assert "member" in result.stderr or "archive" in result.stderr


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_posts_xml_names_the_file_and_line(tmp_path, cut):
    text = POSTS.read_bytes()
    site = tmp_path / "cooking.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml").write_bytes(text[: int(len(text) * cut)])
    result = cli(f"source.path={site / 'Posts.xml'}", f"output_dir={tmp_path / 'o'}")
    assert_one_line_failure(result, tmp_path / "o", str(site / "Posts.xml"), "line", "truncated")


def test_corrupt_xml_content_names_the_line(tmp_path):
    lines = POSTS.read_bytes().split(b"\n")
    lines.insert(5, b"\x00\x17garbage from a bad disk sector \xff\xfe")
    site = tmp_path / "s"
    site.mkdir()
    (site / "Posts.xml").write_bytes(b"\n".join(lines))
    result = cli(f"source.path={site / 'Posts.xml'}", f"output_dir={tmp_path / 'o'}")
    assert_one_line_failure(result, tmp_path / "o", "line 6", "corrupt XML")


def test_truncated_and_corrupt_zst(tmp_path):
    src = FIX / "reddit"
    for name, mangle in (("truncated", lambda b: b[:-7]), ("corrupt", lambda b: b[:20] + bytes(x ^ 0xFF for x in b[20:60]) + b[60:])):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(src / "RS_2023-01.zst", d / "RS_2023-01.zst")
        (d / "RC_2023-01.zst").write_bytes(mangle((src / "RC_2023-01.zst").read_bytes()))
        result = cli("source=reddit", f"source.path={d}", f"output_dir={tmp_path / name / 'o'}")
        assert_one_line_failure(result, tmp_path / name / "o", str(d / "RC_2023-01.zst"), "byte")


def test_dtd_xxe_and_billion_laughs_are_refused_quickly(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    xxe = (f'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE posts [<!ENTITY xxe SYSTEM "file://{secret}">]>\n<posts>\n'
           f'  <row Id="1" PostTypeId="1" Score="1" Title="t" Body="&xxe;" />\n</posts>\n')
    lol = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
           + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % ("" if i == 1 else i - 1)) * 10}">' for i in range(1, 10))
           + ']>\n<posts>\n  <row Id="1" PostTypeId="1" Score="1" Title="t" Body="&lol9;" />\n</posts>\n')
    for name, text in (("xxe", xxe), ("lol", lol)):
        site = tmp_path / name
        site.mkdir()
        (site / "Posts.xml").write_text(text)
        start = time.perf_counter()
        result = cli(f"source.path={site / 'Posts.xml'}", f"output_dir={tmp_path / name / 'o'}")
        assert time.perf_counter() - start < 60
        assert_one_line_failure(result, tmp_path / name / "o", "DTD")
        assert "TOP-SECRET" not in result.stderr + result.stdout


def test_entity_without_dtd_and_external_references_stay_harmless(tmp_path):
    """Rows are parsed without any DTD: an entity reference is a malformed row, never a file read or an expansion."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doc = (b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
           b'  <row Id="1" Body="&xxe;" />\n'
           b'  <row Id="2" Body="<!ENTITY a SYSTEM \'file://' + str(secret).encode() + b'\'>" />\n'
           b'  <row Id="3" Body="ok" />\n</posts>\n')
    out = list(iter_rows([doc], "x.xml", "posts"))
    assert [isinstance(r, BadRow) for _, r in out] == [True, True, False] and dict(out[2][1]) == {"Id": "3", "Body": "ok"}
    assert all("TOP-SECRET" not in str(getattr(r, "excerpt", r)) for _, r in out)


def test_absurd_rows_are_refused_without_holding_them(tmp_path):
    import resource

    huge = 64 << 20  # a 64 MiB attribute, streamed in 1 MiB chunks
    head = b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n  <row Id="1" PostTypeId="2" Body="'

    def chunks():
        yield head
        for _ in range(huge >> 20):
            yield b"a" * (1 << 20)
        yield b'" />\n  <row Id="2" PostTypeId="1" Score="1" Title="t" Body="b" />\n</posts>\n'

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = list(iter_rows(chunks(), "big.xml", "posts", max_row_bytes=1 << 20))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert isinstance(out[0][1], BadRow) and out[0][1].reason == "row_too_large" and out[0][0] == 3
    assert out[1][0] == 4 and dict(out[1][1]) == {"Id": "2", "PostTypeId": "1", "Score": "1", "Title": "t", "Body": "b"}
    assert grown_mb < 32, grown_mb  # far less than the 64 MiB row


def test_reader_rows_do_not_depend_on_chunking():
    data = POSTS.read_bytes()
    whole = [(line, r.reason if isinstance(r, BadRow) else dict(r)) for line, r in iter_rows([data], "p", "posts")]
    for size in (1, 7, 333, 4096):
        pieces = [data[i:i + size] for i in range(0, len(data), size)]
        assert [(line, r.reason if isinstance(r, BadRow) else dict(r)) for line, r in iter_rows(pieces, "p", "posts")] == whole
    assert len(whole) == 28


def test_wrong_root_or_encoding_is_an_error():
    with pytest.raises(CollectError, match="expected root <posts>"):
        list(iter_rows([b'<?xml version="1.0"?>\n<users>\n</users>\n'], "x", "posts"))
    with pytest.raises(CollectError, match="utf-16"):
        list(iter_rows([b'<?xml version="1.0" encoding="utf-16"?>\n<posts>\n</posts>\n'], "x", "posts"))


def test_archive_member_names_never_become_paths(tmp_path):
    import py7zr

    archive = tmp_path / "dumps" / "cooking.stackexchange.com.7z"
    archive.parent.mkdir()
    with py7zr.SevenZipFile(archive, "w") as z:
        for name in ("Posts.xml", "Users.xml", "Votes.xml"):
            z.write(FIX / "cooking.stackexchange.com" / name, name)
        z.write(POSTS, "../../escaped/Posts.xml")
        z.write(POSTS, "/abs/Users.xml")
    out = tmp_path / "dumps" / "out"
    result = cli(f"source.path={archive}", f"output_dir={out}")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "escaped").exists() and not Path("/abs").exists()
    created = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert created == {"dumps"}
    import json

    assert json.loads((out / "stats.json").read_text())["rows"]["Posts"]["read"] == 28


def test_a_failed_collect_leaves_no_scratch_and_no_output_behind(tmp_path):
    """Phase 1 fails on a damaged archive member: the scratch stores (default under output_dir/.work, or a fresh directory
    inside work_dir) and the output directory it created are gone; with keep_work=true the scratch stays and the log says where."""
    data = bytearray(SITE_7Z.read_bytes())
    for i in range(64, 400):  # damage the packed stream: the archive opens, reading its members fails
        data[i] ^= 0x5A
    bad = tmp_path / "cooking.stackexchange.com.7z"
    bad.write_bytes(bytes(data))
    result = cli(f"source.path={bad}", f"output_dir={tmp_path / 'o'}")
    assert_one_line_failure(result, tmp_path / "o", str(bad))
    assert not (tmp_path / "o").exists()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "mine.txt").write_text("a user's file")
    result = cli(f"source.path={bad}", f"output_dir={tmp_path / 'o2'}", f"work_dir={scratch}")
    assert_one_line_failure(result, tmp_path / "o2", str(bad))
    assert sorted(p.name for p in scratch.iterdir()) == ["mine.txt"] and not (tmp_path / "o2").exists()
    result = cli(f"source.path={bad}", f"output_dir={tmp_path / 'o3'}", f"work_dir={scratch}", "keep_work=true")
    kept = [p for p in scratch.iterdir() if p.name.startswith("worldpm-collect-")]
    assert result.returncode == 2 and len(kept) == 1 and f"kept in {kept[0]}" in result.stderr
