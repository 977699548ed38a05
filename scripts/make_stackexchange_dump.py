#!/usr/bin/env python
"""Generate a synthetic Stack Exchange site dump in the exact dump format (Posts.xml, Users.xml, Votes.xml; optionally packed as
`<site>.7z` like the real per-site archives).

Realistic in the ways the collector cares about: HTML bodies with code blocks (`lang-xxx` classes), inline code, links, lists,
tables, block quotes and LaTeX; long-tailed answers per question (many with 0-1 answers, a few with dozens) and long-tailed scores;
accepted answers, closed questions, community-wiki and deleted-owner posts, tag wikis (other PostTypeIds), both tag formats;
Votes.xml whose up/down votes match each post's Score; rows written in post-id order, one per line, as the dump does.

The answers' votes follow their quality, so a reward model can learn from the text: a good answer (high latent quality) is long,
on topic (it repeats the question's function and language), explains, gives a code block and a list of steps; a poor one is short,
sloppy, off topic or a "me too". Score = quality * thread popularity + noise, so the better answer wins about 85-90% of the pairs
with different scores. Deterministic for a given --seed.

    python scripts/make_stackexchange_dump.py --out /tmp/site --questions 2000 --7z
    python scripts/make_stackexchange_dump.py --out /tmp/big --target-mb 300 --7z     # >= 300 MB of Posts.xml
"""
from __future__ import annotations

import argparse
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

LANGS = {
    "python": ("py", ["list", "dict", "string", "file", "dataframe", "generator", "class", "tuple", "set", "json object"],
               ["sorted", "zip", "enumerate", "open", "json.loads", "itertools.chain", "functools.reduce", "re.sub", "str.join",
                "collections.Counter"]),
    "javascript": ("js", ["array", "promise", "object", "string", "event", "DOM node", "map", "fetch response", "JSON", "date"],
                   ["Array.map", "Promise.all", "Object.keys", "JSON.parse", "addEventListener", "fetch", "Array.reduce",
                    "setTimeout", "String.split", "Date.parse"]),
    "sql": ("sql", ["table", "join", "index", "query", "view", "column", "row", "transaction", "subquery", "constraint"],
            ["GROUP BY", "LEFT JOIN", "CREATE INDEX", "ROW_NUMBER", "COALESCE", "WITH", "UNION ALL", "EXISTS", "CAST",
             "PARTITION BY"]),
    "rust": ("rust", ["vector", "string", "struct", "trait", "iterator", "hashmap", "slice", "option", "result", "closure"],
             ["iter().map", "collect", "unwrap_or", "into_iter", "as_ref", "clone", "Box::new", "match", "impl Trait", "?"]),
    "bash": ("bash", ["file", "variable", "loop", "array", "pipe", "process", "directory", "string", "argument", "output"],
             ["find", "xargs", "sed", "awk", "grep -r", "read -r", "printf", "trap", "set -e", "sort -u"]),
}
VERBS = ["sort", "merge", "filter", "convert", "parse", "split", "reverse", "group", "deduplicate", "iterate over", "validate",
         "serialize", "flatten", "count items in", "cache"]
GOOD_OPENERS = ["The idiomatic way is to use", "You can do this directly with", "The cleanest solution is", "Use",
                "This is exactly what {func} is for: use"]
EXPLAIN = ["This works because {func} returns a new {noun} instead of changing the original, so the input stays untouched.",
           "The key point is that {func} runs in linear time, so it stays fast even for a large {noun}.",
           "Note that {func} keeps the original order, which matters when you later {verb} the {noun} again.",
           "Under the hood {func} handles the edge cases (an empty {noun}, duplicates) for you.",
           "Compared with a manual loop this is shorter, easier to read and less error-prone."]
CONTEXT = ["I have already tried to {verb} the {noun} by hand in a loop, which works for small inputs but takes minutes on the real data.",
           "For context, the {noun} comes from a file that another team produces, so I cannot change its format.",
           "I am on the latest stable release of {lang} and the standard library only; adding dependencies is hard here.",
           "Searching turned up a few answers from years ago, but they use APIs that have since been deprecated.",
           "The same code used to work last month, so something in the environment must have changed in between."]
STEPS = ["Read the {noun} into a variable.", "Call <code>{func}</code> on it.", "Check the result for the empty case.",
         "Return or print the new {noun}.", "Add a test with a small {noun} to be sure."]
POOR = ["<p>idk, just google it</p>", "<p>same problem here, any update??</p>", "<p>why would you even want to do that</p>",
        "<p>works on my machine</p>", "<p>use a different language lol</p>", "<p>I had this once, restarting fixed it I think</p>",
        "<p>+1 would also like to know</p>", "<p>try reinstalling everything</p>", "<p>did you read the docs?</p>",
        "<p>this question is a duplicate, search first</p>"]
OFF_TOPIC = ["<p>I like turtles. Also my cat walked on the keyboard once and deleted a whole file.</p>",
             "<p>Not sure about {lang}, but in my experience spreadsheets are easier for this kind of thing.</p>",
             "<p>Have you tried turning your computer off and on again? That usually helps with most problems.</p>",
             "<p>Unrelated, but does anyone know a good {lang} book for beginners?</p>"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia", "peggy",
         "rupert", "sybil", "trent", "victor", "walter", "yuki", "zoe", "Jörg", "Ana María", "李雷", "O'Brien"]


def esc(s: str) -> str:
    """Escape for an XML attribute as the dump does (newlines become &#xA;)."""
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\r", "&#xD;").replace("\n", "&#xA;"))


def row(attrs: dict) -> str:
    return "  <row " + " ".join(f'{k}="{esc(str(v))}"' for k, v in attrs.items() if v is not None) + " />\r\n"


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def license_for(t: datetime) -> str:
    return "CC BY-SA 2.5" if t.year < 2011 else ("CC BY-SA 3.0" if t.year < 2018 else "CC BY-SA 4.0")


class Generator:
    def __init__(self, seed: int, site: str, tag_format: str, n_users: int, lengths: str = "compact"):
        self.rng = random.Random(seed)
        self.site, self.tag_format = site, tag_format
        self.lengths = lengths
        self.n_users = n_users
        self.next_id = 1
        self.t = datetime(2009, 1, 1)

    def tail(self, mu: float, sigma: float) -> int:
        """A long-tailed count (log-normal, floored): how forum post lengths are distributed."""
        return int(self.rng.lognormvariate(mu, sigma))

    def code_block(self, lang, ext, noun, func, lines):
        rng = self.rng
        var = noun.replace(" ", "_").lower()
        if lang == "python":
            body = [f"{var} = load_{var}()", f"result = {func}({var})"] + [f"# step {i}: {rng.choice(VERBS)} the {noun}" for i in range(lines)] + ["print(result)"]
        elif lang == "javascript":
            body = [f"const {var} = load();", f"const result = {func}({var});"] + [f"// step {i}: {rng.choice(VERBS)}" for i in range(lines)] + ["console.log(result);"]
        elif lang == "sql":
            body = [f"SELECT id, {func}(value) AS result", f"FROM {var}"] + [f"-- step {i}" for i in range(lines)] + ["ORDER BY id;"]
        elif lang == "rust":
            body = [f"let {var} = load();", f"let result = {var}.{func}();"] + [f"// step {i}" for i in range(lines)] + ['println!("{:?}", result);']
        else:
            body = [f'{func} "$INPUT" > result.txt'] + [f"# step {i}" for i in range(lines)] + ['cat result.txt']
        code = "\n".join(body).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f'<pre class="lang-{ext} prettyprint-override"><code>{code}\n</code></pre>'

    def question(self):
        rng = self.rng
        lang = rng.choice(list(LANGS))
        ext, nouns, funcs = LANGS[lang]
        noun, verb, func = rng.choice(nouns), rng.choice(VERBS), rng.choice(funcs)
        title = rng.choice([f"How do I {verb} a {noun} in {lang.capitalize()}?", f"Best way to {verb} a {noun} with {lang}",
                            f"{lang.capitalize()}: {verb} a {noun} without a loop", f"Why does my code fail to {verb} a {noun}?"])
        parts = [f"<p>I am trying to {verb} a <code>{noun}</code> in {lang}, but my version is slow and I am not sure it is right.</p>"]
        if self.lengths == "forum":  # real questions: most a few lines, some pages of context
            parts += [f"<p>{rng.choice(CONTEXT).format(noun=noun, verb=verb, lang=lang)}</p>" for _ in range(self.tail(0.0, 1.1))]
        if rng.random() < 0.6:
            parts.append(self.code_block(lang, ext, noun, "my_" + verb.split()[0],
                                         rng.randint(1, 4) if self.lengths == "compact" else 1 + self.tail(1.0, 1.0)))
        if rng.random() < 0.2:
            parts.append(f"<blockquote><p>Error: cannot {verb} {noun} (code {rng.randint(1, 255)})</p></blockquote>")
        if rng.random() < 0.1:
            parts.append(f"<p>The cost should be $O(n \\log n)$ where $n_i$ is the size of the {noun}, i.e. $$T(n) = 2T(n/2) + n$$</p>")
        if rng.random() < 0.05:
            parts.append(f"<table><tr><th>input</th><th>expected</th></tr><tr><td>[3, 1]</td><td>[1, 3]</td></tr></table>")
        parts.append(f"<p>What is the idiomatic way to do this? I read the <a href=\"https://example.com/{lang}/docs\">docs</a> "
                     f"but could not find it.</p>")
        tags = [lang, noun.replace(" ", "-"), verb.split()[0]]
        return lang, ext, noun, verb, func, title, "\n".join(parts) + "\n", tags

    def answer_body(self, quality, lang, ext, noun, verb, func):
        rng = self.rng
        fmt = dict(func=func, noun=noun, verb=verb, lang=lang)
        if quality > 0.66:
            parts = [f"<p>{rng.choice(GOOD_OPENERS).format(**fmt)} <code>{func}</code>. It lets you {verb} the {noun} "
                     f"in one step.</p>",  # (draws stay in this order: compact output must not change)
                     self.code_block(lang, ext, noun, func, rng.randint(1, 5) if self.lengths == "compact" else 1 + self.tail(1.2, 1.0)),
                     f"<p>{rng.choice(EXPLAIN).format(**fmt)} {rng.choice(EXPLAIN).format(**fmt)}</p>"]
            if self.lengths == "forum":  # the long tail of thorough answers
                parts += [f"<p>{' '.join(rng.choice(EXPLAIN).format(**fmt) for _ in range(1 + rng.randint(0, 2)))}</p>"
                          for _ in range(self.tail(0.3, 1.1))]
            if rng.random() < 0.7:
                steps = rng.sample(STEPS, 3)
                parts.append("<ol>" + "".join(f"<li>{s.format(**fmt)}</li>" for s in steps) + "</ol>")
            if rng.random() < 0.5:
                parts.append(f"<p>See the <a href=\"https://example.com/{lang}/{func}\">documentation of <code>{func}</code></a> "
                             f"for the details.</p>")
            return "\n".join(parts) + "\n"
        if quality > 0.33:
            return (f"<p>Maybe try <code>{func}</code>? Something like <code>{func}(x)</code> should {verb} the {noun}, "
                    f"but I have not tested it.</p>\n")
        if rng.random() < 0.5:
            return rng.choice(POOR) + "\n"
        return rng.choice(OFF_TOPIC).format(**fmt) + "\n"

    def thread(self):
        """(question row, [answer rows], votes per post) for one thread."""
        rng = self.rng
        lang, ext, noun, verb, func, title, body, tags = self.question()
        self.t += timedelta(minutes=rng.randint(1, 240))
        qid = self.next_id
        self.next_id += 1
        # long-tailed answers per question: many with 0-1, a few with dozens
        n_answers = min(int(rng.paretovariate(1.3)) - 1 + (1 if rng.random() < 0.55 else 0), 60)
        popularity = rng.lognormvariate(0.5, 0.9)
        answers, ids = [], []
        for _ in range(n_answers):
            aid = self.next_id
            self.next_id += 1
            quality = rng.random()
            score = round((quality * 6 - 1.2) * popularity + rng.gauss(0, 0.6))
            ids.append((aid, quality, score))
        accepted = None
        if ids and rng.random() < 0.6:
            accepted = max(ids, key=lambda x: x[1] + rng.gauss(0, 0.2))[0]
        qscore = round(popularity * rng.gauss(3, 2))
        created = self.t
        owner = rng.randint(1, self.n_users) if rng.random() > 0.05 else None
        qrow = {"Id": qid, "PostTypeId": 1, "AcceptedAnswerId": accepted, "CreationDate": ts(created), "Score": qscore,
                "ViewCount": int(popularity * 500), "Body": body, "OwnerUserId": owner,
                "OwnerDisplayName": rng.choice(NAMES) if owner is None else None,
                "LastActivityDate": ts(created + timedelta(days=3)), "Title": title,
                "Tags": ("".join(f"<{t}>" for t in tags) if self.tag_format == "angle" else "|" + "|".join(tags) + "|"),
                "AnswerCount": n_answers, "CommentCount": rng.randint(0, 5),
                "ClosedDate": ts(created + timedelta(days=1)) if rng.random() < 0.04 else None,
                "CommunityOwnedDate": ts(created) if rng.random() < 0.02 else None, "ContentLicense": license_for(created)}
        rows = [qrow]
        votes = [(qid, qscore)]
        for aid, quality, score in ids:
            when = created + timedelta(minutes=rng.randint(1, 5000))
            owner = rng.randint(1, self.n_users) if rng.random() > 0.05 else None
            rows.append({"Id": aid, "PostTypeId": 2, "ParentId": qid, "CreationDate": ts(when), "Score": score,
                         "Body": self.answer_body(quality, lang, ext, noun, verb, func), "OwnerUserId": owner,
                         "OwnerDisplayName": rng.choice(NAMES) if owner is None else None,
                         "LastActivityDate": ts(when), "CommentCount": rng.randint(0, 3),
                         "CommunityOwnedDate": ts(when) if rng.random() < 0.01 else None, "ContentLicense": license_for(when)})
            votes.append((aid, score))
        if rng.random() < 0.01:  # a tag wiki excerpt: not a question or answer, the collector skips it
            wid = self.next_id
            self.next_id += 1
            rows.append({"Id": wid, "PostTypeId": 4, "CreationDate": ts(created), "Score": 0,
                         "Body": f"<p>Questions about the {lang} language.</p>\n", "ContentLicense": license_for(created)})
        return rows, votes, accepted


def generate(out: Path, site: str, questions: int | None, target_mb: float | None, seed: int, tag_format: str,
             n_users: int, pack: bool, votes_table: bool = True, lengths: str = "compact") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(seed, site, tag_format, n_users, lengths)
    target = int(target_mb * 1e6) if target_mb else None
    n_q = n_rows = 0
    vote_id = 1
    with open(out / "Posts.xml", "w", encoding="utf-8", newline="") as posts, \
            open(out / "Votes.xml", "w", encoding="utf-8", newline="") as votes:
        posts.write('\ufeff<?xml version="1.0" encoding="utf-8"?>\r\n<posts>\r\n')
        votes.write('\ufeff<?xml version="1.0" encoding="utf-8"?>\r\n<votes>\r\n')
        written = 0
        while (questions is None or n_q < questions) and (target is None or written < target):
            rows, post_votes, accepted = gen.thread()
            n_q += 1
            for r in rows:
                line = row(r)
                posts.write(line)
                written += len(line.encode("utf-8"))
                n_rows += 1
            day = rows[0]["CreationDate"][:10] + "T00:00:00.000"
            for post_id, score in (post_votes if votes_table else []):
                down = min(int(gen.rng.expovariate(1.0)), 20)
                up = max(score + down, 0)
                down = up - score
                for kind, count in ((2, up), (3, down)):
                    for _ in range(count):
                        votes.write(row({"Id": vote_id, "PostId": post_id, "VoteTypeId": kind, "CreationDate": day}))
                        vote_id += 1
            if accepted and votes_table:
                votes.write(row({"Id": vote_id, "PostId": accepted, "VoteTypeId": 1, "CreationDate": day}))
                vote_id += 1
        posts.write("</posts>\r\n")
        votes.write("</votes>\r\n")
    with open(out / "Users.xml", "w", encoding="utf-8", newline="") as users:
        users.write('\ufeff<?xml version="1.0" encoding="utf-8"?>\r\n<users>\r\n')
        users.write(row({"Id": -1, "Reputation": 1, "CreationDate": "2009-01-01T00:00:00.000", "DisplayName": "Community",
                         "AboutMe": "<p>Hi, I'm not really a person.</p>", "AccountId": -1}))
        for uid in range(1, n_users + 1):
            users.write(row({"Id": uid, "Reputation": int(gen.rng.paretovariate(1.2) * 10),
                             "CreationDate": "2009-01-01T00:00:00.000",
                             "DisplayName": f"{gen.rng.choice(NAMES)}{uid}", "Views": gen.rng.randint(0, 900),
                             "UpVotes": gen.rng.randint(0, 50), "DownVotes": gen.rng.randint(0, 5), "AccountId": uid + 1000}))
        users.write("</users>\r\n")
    info = {"questions": n_q, "post_rows": n_rows, "posts_bytes": (out / "Posts.xml").stat().st_size}
    if pack:
        import py7zr

        archive = out.parent / f"{site}.7z" if out.name == site else out / f"{site}.7z"
        archive.unlink(missing_ok=True)
        with py7zr.SevenZipFile(archive, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 6}]) as z:
            for table in ("Posts.xml", "Users.xml", "Votes.xml"):
                z.write(out / table, table)
        info["archive"] = str(archive)
        info["archive_bytes"] = archive.stat().st_size
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="directory for Posts.xml, Users.xml, Votes.xml")
    ap.add_argument("--site", default="synthetic.stackexchange.com")
    ap.add_argument("--questions", type=int, default=None, help="number of questions")
    ap.add_argument("--target-mb", type=float, default=None, help="stop once Posts.xml has this many MB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag-format", choices=["angle", "pipe"], default="angle", help="<a><b> (older dumps) or |a|b| (newer)")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--7z", dest="pack", action="store_true", help="also write <site>.7z (LZMA2) beside the tables")
    ap.add_argument("--no-votes", dest="votes", action="store_false", help="an empty Votes.xml (faster for big benchmark dumps)")
    ap.add_argument("--lengths", choices=["compact", "forum"], default="compact",
                    help="compact: short posts (the shipped sample); forum: log-normal post lengths with a long tail, like real "
                         "Stack Exchange (most posts short, some pages long): what padding-free packing is for")
    args = ap.parse_args()
    if args.questions is None and args.target_mb is None:
        ap.error("give --questions or --target-mb")
    print(generate(args.out, args.site, args.questions, args.target_mb, args.seed, args.tag_format, args.users, args.pack,
                   args.votes, args.lengths))


if __name__ == "__main__":
    main()
