"""Stack Exchange dump -> threads: read Posts/Users/Votes into an on-disk store, then walk questions with their answers.

The dump is ordered by post id, not by thread, so answers are grouped under their questions in an embedded SQLite store on disk
(one file per site, in the collect work directory): memory stays bounded whatever the dump size, and the disk needed is about the
size of the post bodies (measured: 0.6-0.8x the Posts.xml size, see docs/collect.md). Phase 1 (`ingest_site`, one process per site) streams the
tables into the store; phase 2 (`site_threads`, any number of processes, one id range each) merge-joins questions with their answers
(and authors, and vote counts) in id order and converts HTML to markdown.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from data_prep.accounting import Stats
from data_prep.html_markdown import html_to_markdown, surely_nonempty
from data_prep.inputs import SiteInput, table_chunks
from data_prep.pairing import Reply, Thread
from data_prep.store import INVALID, connect, group_replies, report_orphans
from data_prep.xml_rows import BadRow, iter_rows

BATCH = 2000
_TAGS = re.compile(r"\||><")

SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (id INTEGER PRIMARY KEY, line INTEGER, score INTEGER, title TEXT, body TEXT, tags TEXT,
    owner INTEGER, owner_name TEXT, accepted INTEGER, created TEXT, closed TEXT, wiki INTEGER, license TEXT);
CREATE TABLE IF NOT EXISTS answers (id INTEGER PRIMARY KEY, parent INTEGER, line INTEGER, score INTEGER, body TEXT,
    owner INTEGER, owner_name TEXT, created TEXT, wiki INTEGER, license TEXT);
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE IF NOT EXISTS votes (post_id INTEGER PRIMARY KEY, up INTEGER, down INTEGER);
"""


def split_tags(tags: str | None) -> list[str]:
    """Both dump formats: `<a><b>` (older) and `|a|b|` (newer), as openzim/sotoki splits them."""
    if not tags or len(tags) < 2:
        return []
    return [t for t in _TAGS.split(tags[1:-1]) if t]


# -------------------------------------------------------------------------------------------------------------- phase 1: ingest
def _rows(source, root: str, stats: Stats, table: str, max_row_bytes: int, progress: Callable[[int, int], None]):
    """(line, attrs) of good rows; bad rows are counted in block rows.<table> and sampled."""
    def counted():
        for chunk in table_chunks(source):
            progress(len(chunk), 0)
            yield chunk

    n = 0
    block = f"rows.{table}"
    try:
        for line, row in iter_rows(counted(), source.label, root, max_row_bytes):
            n += 1
            if n % 5000 == 0:
                progress(0, 5000)
            if isinstance(row, BadRow):
                stats.drop(block, row.reason, {"file": source.label, "line": line, "detail": row.detail, "excerpt": row.excerpt})
                continue
            yield line, row
    finally:
        stats.add(block, "read", n)  # once, not per row
    progress(0, n % 5000)


def _ingest_users(db, source, stats, cfg, progress):
    batch = []

    def flush():
        # the first row of an Id wins, as in Posts; a repeated one is counted as dropped (duplicate_Id), not as a second user
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO users VALUES (?, ?)", [(uid, name) for uid, name, _ in batch])
        inserted = db.total_changes - before
        stats.add("rows.Users", "user", inserted)
        if inserted < len(batch):
            stats.drop("rows.Users", "duplicate_Id", {"file": source.label, "line": batch[-1][2]}, len(batch) - inserted)
        batch.clear()

    for line, attrs in _rows(source, "users", stats, "Users", cfg.max_row_bytes, progress):
        try:
            uid = int(attrs["Id"])
        except (KeyError, ValueError):
            stats.drop("rows.Users", "bad_Id", {"file": source.label, "line": line, "excerpt": str(dict(attrs))[:300]})
            continue
        batch.append((uid, attrs.get("DisplayName"), line))
        if len(batch) >= BATCH:
            flush()
    flush()


def _ingest_votes(db, source, stats, cfg, progress):
    """Up and down votes per post. A vote row whose Id was already read (a repeated line) is dropped as duplicate_Id rather
    than counted twice. Dumps list votes in Id order, so only a row whose Id is not above every Id so far is looked up in the
    store's `vote_ids` table (which holds every Id read): the usual row costs one comparison and its share of a bulk insert.
    The table is dropped at the end; Posts, read next, reuse its pages, so the store grows no larger for it."""
    counts: dict[int, list[int]] = {}
    ids: list[tuple[int]] = []
    highest = None
    db.execute("CREATE TABLE IF NOT EXISTS vote_ids (id INTEGER PRIMARY KEY)")

    def flush():
        db.executemany("INSERT INTO votes VALUES (?, ?, ?) ON CONFLICT(post_id) DO UPDATE SET up = up + excluded.up, "
                       "down = down + excluded.down", [(k, v[0], v[1]) for k, v in counts.items()])
        counts.clear()
        db.executemany("INSERT OR IGNORE INTO vote_ids VALUES (?)", ids)
        ids.clear()

    for line, attrs in _rows(source, "votes", stats, "Votes", cfg.max_row_bytes, progress):
        try:
            post, kind = int(attrs["PostId"]), int(attrs["VoteTypeId"])
            vid = attrs.get("Id")
            vid = None if vid is None else int(vid)
        except (KeyError, ValueError):
            stats.drop("rows.Votes", "bad_attribute", {"file": source.label, "line": line, "excerpt": str(dict(attrs))[:300]})
            continue
        if vid is not None:
            if highest is not None and vid <= highest:  # out of order: a repeat, or a vote listed late
                if ids:
                    flush()
                if db.execute("SELECT 1 FROM vote_ids WHERE id = ?", (vid,)).fetchone():
                    stats.drop("rows.Votes", "duplicate_Id", {"file": source.label, "line": line, "id": str(vid)})
                    continue
            else:
                highest = vid
            ids.append((vid,))
        if kind in (2, 3):
            stats.add("rows.Votes", "vote")
            c = counts.setdefault(post, [0, 0])
            c[0 if kind == 2 else 1] += 1
        else:
            stats.add("rows.Votes", "other_vote_type")
        if len(counts) >= 50_000 or len(ids) >= 50_000:
            flush()
    flush()
    db.execute("DROP TABLE vote_ids")


def _check_post(attrs) -> tuple[str | None, tuple | None]:
    """(drop reason, None) or (None, parsed fields). The first failing check names the reason. Written flat, with one lookup
    per attribute: it runs once per row of the dump."""
    get = attrs.get
    pid = get("Id")
    if pid is None:
        return "missing_Id", None
    try:
        pid = int(pid)
    except ValueError:
        return "bad_Id", None
    kind = get("PostTypeId")
    if kind is not None:
        try:
            kind = int(kind)
        except ValueError:
            return "bad_PostTypeId", None
    if kind != 1 and kind != 2:
        return ("missing_PostTypeId" if kind is None else "other_post_type"), None
    score = get("Score")
    if score is None:
        return "missing_Score", None
    try:
        score = int(score)
    except ValueError:
        return "bad_Score", None
    body = get("Body") or ""
    if body.isspace() or not body:  # the same test as `not body.strip()`, without copying the body
        return "empty_body", None
    title = get("Title") or ""
    if INVALID.search(body) or (title and INVALID.search(title)):
        return "invalid_characters", None
    try:
        owner = get("OwnerUserId")
        if owner is not None:
            owner = int(owner)
        if kind == 1:
            if not title or title.isspace():
                return "missing_Title", None
            accepted = get("AcceptedAnswerId")
            if accepted is not None:
                accepted = int(accepted)
            return None, (1, pid, score, title, body, get("Tags"), owner, get("OwnerDisplayName"), accepted,
                          get("CreationDate"), get("ClosedDate"), get("CommunityOwnedDate") is not None,
                          get("ContentLicense"))
        parent = get("ParentId")
        if parent is not None:
            parent = int(parent)
    except ValueError as exc:
        return "bad_attribute", (str(exc),)
    if parent is None:
        return "missing_ParentId", None
    return None, (2, pid, score, parent, body, owner, get("OwnerDisplayName"), get("CreationDate"),
                  get("CommunityOwnedDate") is not None, get("ContentLicense"))


def _ingest_posts(db, source, stats, cfg, progress):
    questions, answers = [], []

    def flush():
        for sql, batch, kind in (("INSERT OR IGNORE INTO questions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", questions, "question"),
                                 ("INSERT OR IGNORE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?)", answers, "answer")):
            if batch:
                before = db.total_changes
                db.executemany(sql, batch)
                inserted = db.total_changes - before
                stats.add("rows.Posts", kind, inserted)
                if inserted < len(batch):
                    stats.drop("rows.Posts", "duplicate_Id", {"file": source.label, "line": batch[-1][1]}, len(batch) - inserted)
                batch.clear()

    for line, attrs in _rows(source, "posts", stats, "Posts", cfg.max_row_bytes, progress):
        reason, fields = _check_post(attrs)
        if reason is not None:
            sample = None if reason == "other_post_type" else {
                "file": source.label, "line": line, "id": attrs.get("Id"), "excerpt": str(dict(attrs))[:300],
                **({"detail": fields[0]} if fields else {})}
            stats.drop("rows.Posts", reason, sample)
            continue
        if fields[0] == 1:
            _, pid, score, title, body, tags, owner, owner_name, accepted, created, closed, wiki, lic = fields
            questions.append((pid, line, score, title, body, tags, owner, owner_name, accepted, created, closed, wiki, lic))
        else:
            _, pid, score, parent, body, owner, owner_name, created, wiki, lic = fields
            answers.append((pid, parent, line, score, body, owner, owner_name, created, wiki, lic))
        if len(questions) + len(answers) >= BATCH:
            flush()
    flush()


def ingest_site(site: SiteInput, db_path: Path, cfg, stats: Stats, progress: Callable[[int, int], None]) -> dict:
    """Phase 1: stream the site's tables into `db_path`. Returns facts about the store (rows, size)."""
    db_path.unlink(missing_ok=True)
    db = connect(db_path)
    db.executescript(SCHEMA)
    try:
        with db:
            if "Users" in site.tables and cfg.read_users:
                _ingest_users(db, site.tables["Users"], stats, cfg, progress)
            if "Votes" in site.tables and cfg.read_votes:
                _ingest_votes(db, site.tables["Votes"], stats, cfg, progress)
            _ingest_posts(db, site.tables["Posts"], stats, cfg, progress)
        with db:
            db.execute("CREATE INDEX IF NOT EXISTS answers_parent ON answers(parent, id)")
        # answers whose question is not in the dump (deleted, or a malformed question row): dropped here, once per site
        label = site.tables["Posts"].label
        report_orphans(db, stats, child="answers", parent="questions", link="parent", columns="c.id, c.parent, c.line",
                       reason="question_missing",
                       sample=lambda aid, parent, line: {"file": label, "line": line, "id": str(aid), "parent": parent})
        n_questions = db.execute("SELECT COUNT(*) FROM questions").fetchone()[0]
    finally:
        db.close()
    return {"site": site.site, "db": str(db_path), "questions": n_questions, "db_bytes": db_path.stat().st_size}


# -------------------------------------------------------------------------------------------------------------- phase 2: threads
def site_threads(site: str, db_path: Path, posts_label: str, lo: int, hi: int, cfg, stats: Stats) -> Iterator[Thread]:
    """Questions with id in [lo, hi] and their answers, in id order, as Threads (HTML converted to markdown).

    Counts each question in block `questions` (dropped here with a reason, or passed on) and each answer in block `replies`.
    Answers of questions that cannot form any pair are never converted, and the others only when first needed (`Reply.text`):
    converting is most of the cost, and with `pairs.max_per_question` most answers of a long thread never reach a pair."""
    db = connect(db_path, readonly=True)
    base = f"https://{site}"
    try:
        questions = db.execute(
            "SELECT q.id, q.line, q.score, q.title, q.body, q.tags, q.owner, COALESCE(u.name, q.owner_name), q.accepted, "
            "q.created, q.closed, q.wiki, q.license FROM questions q LEFT JOIN users u ON u.id = q.owner "
            "WHERE q.id BETWEEN ? AND ? ORDER BY q.id", (lo, hi))
        answers = db.cursor().execute(
            "SELECT a.parent, a.id, a.line, a.score, a.body, a.owner, COALESCE(u.name, a.owner_name), a.created, a.wiki, "
            "a.license, v.up, v.down FROM answers a LEFT JOIN users u ON u.id = a.owner LEFT JOIN votes v ON v.post_id = a.id "
            "WHERE a.parent BETWEEN ? AND ? ORDER BY a.parent, a.id", (lo, hi))
        for q, group in group_replies(questions, answers):  # answers of questions not in the store are skipped
            thread = _thread(site, base, posts_label, q, group, cfg, stats)
            if thread is not None:
                yield thread
    finally:
        db.close()


def _author(base: str, uid, name) -> dict:
    return {"author": name, "author_url": f"{base}/users/{uid}" if uid is not None and uid >= 0 else None}


def _answer_meta(base, aid, owner, name, lic, created, up, down) -> dict:
    return {"url": f"{base}/a/{aid}", **_author(base, owner, name), "license": lic, "created": created,
            **({"upvotes": up, "downvotes": down} if up is not None else {})}


def _thread(site, base, label, q, group, cfg, stats) -> Thread | None:
    qid, line, score, title, body, tags, owner, owner_name, accepted_id, created, closed, wiki, lic = q
    position = {"file": label, "line": line, "id": str(qid)}

    def drop_question(reason, answers_left=None):
        stats.drop("questions", reason, position)
        stats.add("replies", "question_dropped", len(group) if answers_left is None else answers_left)

    if closed and cfg.drop_closed:
        return drop_question("closed")
    if wiki and cfg.drop_community_wiki:
        return drop_question("community_wiki")
    if owner is None and cfg.drop_deleted_owner:
        return drop_question("deleted_owner")
    if not group:
        return drop_question("no_answers")
    kept = []
    for a in group:
        if a[8] and cfg.drop_community_wiki:
            stats.drop("replies", "community_wiki", {"file": label, "line": a[2], "id": str(a[1])})
        elif a[5] is None and cfg.drop_deleted_owner:
            stats.drop("replies", "deleted_owner", {"file": label, "line": a[2], "id": str(a[1])})
        else:
            kept.append(a)
    # cheap test before converting anything: a pair needs two answers of different scores
    if len(kept) < 2 or (cfg.score_rule == "net" and len({a[3] for a in kept}) < 2):
        stats.add("replies", "no_pair_possible", len(kept))
        return drop_question("fewer_than_2_answers" if len(kept) < 2 else "all_answers_same_score", 0)
    convert = partial(html_to_markdown, converter=cfg.converter)
    body_md = convert(body)
    title = " ".join(title.split())
    replies = []
    for a in kept:
        _, aid, aline, ascore, abody, aowner, aname, acreated, _, alic, up, down = a
        # converted on first use: with pairs.max_per_question most answers of a long thread are never in a pair
        replies.append(Reply(str(aid), None, ascore, acreated, accepted=(aid == accepted_id), upvotes=up,
                             make_meta=partial(_answer_meta, base, aid, aowner, aname, alic, acreated, up, down),
                             html=abody, convert=convert, surely_nonempty=surely_nonempty(abody)))
    meta = {"site": site, "question_id": str(qid), "question_url": f"{base}/questions/{qid}", "title": title,
            "tags": split_tags(tags), "question_score": score, "question_created": created, "question_license": lic,
            **{f"question_{k}": v for k, v in _author(base, owner, owner_name).items()},
            "attribution": f"From {site}, licensed {lic or 'CC BY-SA'}: {base}/questions/{qid}"}
    return Thread("stackexchange", site, str(qid), f"{title}\n\n{body_md}".strip(), replies, meta, position)
