"""Reddit dumps (Pushshift / Arctic Shift monthly RS_/RC_ or per-subreddit .zst NDJSON) -> threads, SHP rules by default.

Submissions and comments come in separate files, so they are joined on disk: phase 1 reads each file (in parallel, one process per
file) into its own SQLite store keeping only rows that pass the row-level rules, then merges those stores into one (bounded memory,
in sorted file order so duplicates resolve the same way every run); phase 2 walks posts by id range and merge-joins their
top-level comments. Rules (each configurable, see configs/source/reddit.yaml): self-posts only, post score >= 10, comment score >= 2,
no deleted/removed text or authors, no moderator or post-author comments, no NSFW, at most 50 comments per post (the earliest);
a pair's preferred comment was written no earlier than the other and has a strictly higher score.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Callable, Iterator

from data_prep.accounting import Stats
from data_prep.inputs import zst_lines
from data_prep.pairing import Reply, Thread
from data_prep.store import INVALID, connect, group_replies, report_orphans

_DELETED = {"[deleted]", "[removed]", "[deleted by user]"}
_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*\)")

POSTS = ("CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY, sid TEXT, line INTEGER, file TEXT, subreddit TEXT, "
         "author TEXT, score INTEGER, created INTEGER, title TEXT, selftext TEXT, upvote_ratio REAL, permalink TEXT)")
COMMENTS = ("CREATE TABLE IF NOT EXISTS comments (id INTEGER PRIMARY KEY, sid TEXT, link INTEGER, line INTEGER, file TEXT, "
            "author TEXT, score INTEGER, created INTEGER, body TEXT)")


def _b36(value: str) -> int:
    return int(value, 36)


def _text(value) -> str:
    return html.unescape(value) if isinstance(value, str) else ""


def _num(obj, key):
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        raise ValueError(f"{key} missing")
    return int(float(value))  # old months store some numbers as strings


def subreddit_filter(cfg) -> frozenset[str] | None:
    """The lower-cased names of `cfg.subreddits`, built once per file (the row checks run once per row); None: any subreddit."""
    return frozenset(s.lower() for s in cfg.subreddits) if cfg.subreddits else None


def _check_submission(obj: dict, cfg, subreddits: frozenset[str] | None) -> tuple[str | None, tuple | None]:
    try:
        sid = obj["id"]
        pid = _b36(sid)
        score, created = _num(obj, "score"), _num(obj, "created_utc")
    except (KeyError, ValueError, TypeError):
        return "bad_or_missing_field", None
    sub = obj.get("subreddit") or ""
    if subreddits is not None and sub.lower() not in subreddits:
        return "other_subreddit", None
    if not obj.get("is_self", False):
        return "not_self_post", None
    if cfg.drop_nsfw and obj.get("over_18"):
        return "nsfw", None
    title, body, author = _text(obj.get("title")), _text(obj.get("selftext")), obj.get("author") or ""
    if body.strip() in _DELETED or author in _DELETED or obj.get("removed_by_category"):
        return "deleted_or_removed", None
    if obj.get("distinguished") == "moderator":
        return "moderator", None
    if cfg.drop_edited_posts and obj.get("edited") not in (None, False, 0, "false"):
        return "edited", None
    if score < cfg.min_post_score:
        return "post_score_below_min", None
    if cfg.max_created_utc is not None and created >= int(cfg.max_created_utc):
        return "created_after_max", None
    if not title.strip():
        return "empty_title", None
    if INVALID.search(title) or INVALID.search(body):
        return "invalid_characters", None
    return None, (pid, sid, sub, author, score, created, title, body, obj.get("upvote_ratio"), obj.get("permalink"))


def _check_comment(obj: dict, cfg, subreddits: frozenset[str] | None) -> tuple[str | None, tuple | None]:
    try:
        sid = obj["id"]
        cid = _b36(sid)
        link = obj["link_id"]
        parent = obj["parent_id"]
        score, created = _num(obj, "score"), _num(obj, "created_utc")
        link_id = _b36(link[3:] if link.startswith("t3_") else link)
    except (KeyError, ValueError, TypeError, AttributeError):
        return "bad_or_missing_field", None
    sub = obj.get("subreddit") or ""
    if subreddits is not None and sub.lower() not in subreddits:
        return "other_subreddit", None
    if not str(parent).startswith("t3_"):
        return "not_top_level", None
    body, author = _text(obj.get("body")), obj.get("author") or ""
    if body.strip() in _DELETED or author in _DELETED:
        return "deleted_or_removed", None
    if obj.get("distinguished") == "moderator":
        return "moderator", None
    if score < cfg.min_comment_score:
        return "comment_score_below_min", None
    if not body.strip():
        return "empty_body", None
    if INVALID.search(body):
        return "invalid_characters", None
    return None, (cid, sid, link_id, author, score, created, body)


def ingest_file(path: Path, kind: str, db_path: Path, cfg, stats: Stats, progress: Callable[[int, int], None]) -> dict:
    """Phase 1 for one file: rows passing the row-level rules go to `db_path`. kind: submissions | comments."""
    db_path.unlink(missing_ok=True)
    db = connect(db_path)
    db.execute(POSTS if kind == "submissions" else COMMENTS)
    block = f"rows.{kind}"
    check = _check_submission if kind == "submissions" else _check_comment
    subreddits = subreddit_filter(cfg)
    batch, label, n = [], str(path), 0
    sql = ("INSERT OR IGNORE INTO posts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)" if kind == "submissions"
           else "INSERT OR IGNORE INTO comments VALUES (?,?,?,?,?,?,?,?,?)")
    table, line_at = ("posts", 2) if kind == "submissions" else ("comments", 3)  # a batch row's line number is at line_at

    def insert() -> None:
        """Insert the batch. A row whose id this file already had (a repeated line: real dumps have them) is not inserted; it is
        dropped here as duplicate_id, naming its line, so every line read is kept or dropped with a reason."""
        before = db.total_changes
        db.executemany(sql, batch)
        if db.total_changes - before < len(batch):  # rare: find which rows lost to an earlier line with their id
            ids = sorted({row[0] for row in batch})
            first = dict(db.execute(f"SELECT id, line FROM {table} WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall())
            for row in batch:
                if first.get(row[0]) != row[line_at]:
                    stats.drop(block, "duplicate_id", {"file": label, "line": row[line_at], "id": row[1],
                                                       "first_line": first.get(row[0])})
        batch.clear()

    with db:
        for line_no, line in zst_lines(path, cfg.max_row_bytes):
            n += 1
            if n % 5000 == 0:
                progress(0, 5000)
            if line is None:
                stats.drop(block, "row_too_large", {"file": label, "line": line_no})
                continue
            progress(len(line) + 1, 0)
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                stats.drop(block, "bad_json", {"file": label, "line": line_no, "detail": str(exc)[:200],
                                               "excerpt": line[:300].decode("utf-8", "replace")})
                continue
            reason, fields = check(obj, cfg, subreddits)
            if reason is not None:
                sample = {"file": label, "line": line_no, "id": obj.get("id")}
                if reason in ("bad_or_missing_field", "invalid_characters"):
                    sample["excerpt"] = line[:300].decode("utf-8", "replace")
                stats.drop(block, reason, sample)
                continue
            if kind == "submissions":
                pid, sid, sub, author, score, created, title, body, ratio, permalink = fields
                batch.append((pid, sid, line_no, label, sub, author, score, created, title, body, ratio, permalink))
            else:
                cid, sid, link, author, score, created, body = fields
                batch.append((cid, sid, link, line_no, label, author, score, created, body))
            if len(batch) >= 2000:
                insert()
        insert()
    stats.add(block, "read", n)  # once, not per row
    progress(0, n % 5000)
    db.close()
    return {"file": label, "kind": kind, "db": str(db_path)}


def merge_stores(parts: list[dict], db_path: Path, stats: Stats) -> None:
    """Merge the per-file stores (in the given, sorted order) into one; a row whose id was already merged is a duplicate."""
    db_path.unlink(missing_ok=True)
    db = connect(db_path)
    db.execute(POSTS)
    db.execute(COMMENTS)
    for part in parts:
        table = "posts" if part["kind"] == "submissions" else "comments"
        db.execute("ATTACH DATABASE ? AS part", (part["db"],))
        with db:
            total = db.execute(f"SELECT COUNT(*) FROM part.{table}").fetchone()[0]
            before = db.total_changes
            db.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM part.{table} ORDER BY id")
            inserted = db.total_changes - before
        db.execute("DETACH DATABASE part")
        block = f"rows.{part['kind']}"
        stats.add(block, "submission" if table == "posts" else "comment", inserted)
        if total > inserted:
            stats.drop(block, "duplicate_id", {"file": part["file"]}, total - inserted)
        Path(part["db"]).unlink(missing_ok=True)
    with db:
        db.execute("CREATE INDEX IF NOT EXISTS comments_link ON comments(link, created, id)")
    # comments whose post is not in the dump or was dropped by a row check: dropped here, once
    report_orphans(db, stats, child="comments", parent="posts", link="link", columns="c.sid, c.file, c.line",
                   reason="post_missing_or_dropped", sample=lambda sid, file, line: {"file": file, "line": line, "id": sid})
    db.close()


def reddit_threads(db_path: Path, lo: int, hi: int, cfg, stats: Stats) -> Iterator[Thread]:
    db = connect(db_path, readonly=True)
    try:
        posts = db.execute("SELECT id, sid, line, file, subreddit, author, score, created, title, selftext, upvote_ratio, "
                           "permalink FROM posts WHERE id BETWEEN ? AND ? ORDER BY id", (lo, hi))
        comments = db.cursor().execute("SELECT link, id, sid, line, file, author, score, created, body FROM comments "
                                       "WHERE link BETWEEN ? AND ? ORDER BY link, created, id", (lo, hi))
        for p, group in group_replies(posts, comments):  # comments of posts not in the store are skipped
            thread = _thread(p, group, cfg, stats)
            if thread is not None:
                yield thread
    finally:
        db.close()


def _strip_links(text: str, cfg) -> str:
    return _LINK.sub(r"\1", text) if cfg.strip_link_urls else text


def _thread(p, group, cfg, stats) -> Thread | None:
    pid, sid, line, file, sub, author, score, created, title, body, ratio, permalink = p
    position = {"file": file, "line": line, "id": sid}
    kept = []
    for c in group:
        if c[5] == author:
            stats.drop("replies", "post_author", {"file": c[4], "line": c[3], "id": c[2]})
        elif len(kept) >= int(cfg.max_comments_per_post):
            stats.drop("replies", "over_max_comments_per_post", None)
        else:
            kept.append(c)
    if len(kept) < 2 or len({c[6] for c in kept}) < 2:
        stats.add("replies", "no_pair_possible", len(kept))
        stats.drop("questions", "fewer_than_2_comments" if len(kept) < 2 else "all_comments_same_score", position)
        return None
    base = f"https://www.reddit.com/r/{sub}/comments/{sid}/"
    replies = [Reply(c[2], _strip_links(c[8], cfg).strip(), c[6], c[7],
                     meta={"url": f"{base}_/{c[2]}/", "author": c[5], "author_url": f"https://www.reddit.com/user/{c[5]}",
                           "created_utc": c[7]}) for c in kept]
    meta = {"subreddit": sub, "post_id": sid, "post_url": base, "title": " ".join(title.split()), "post_score": score,
            "post_created_utc": created, "upvote_ratio": ratio, "post_author": author,
            "post_author_url": f"https://www.reddit.com/user/{author}",
            "license": "none granted (Reddit User Agreement; content owned by its authors)"}
    prompt = f"{' '.join(title.split())}\n\n{_strip_links(body, cfg).strip()}".strip()
    return Thread("reddit", sub, sid, prompt, replies, meta, position)
