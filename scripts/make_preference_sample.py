#!/usr/bin/env python
"""Writes the main job's fine-tuning sample, `data_prep/sample/helpsteer2/preference.jsonl.gz`: made-up rows in the exact
HelpSteer2-Preference format (nvidia/HelpSteer2 `preference/preference.jsonl.gz`: split, prompt, response_1, response_2,
preference_strength -3..3 with < 0 meaning response_1 is better, preference_statement, preference_elaboration,
three_most_similar_preferences, all_preferences_unprocessed), with ties, a validation split and multi-turn prompts marked
by `<extra_id_1>` lines. The better response is on topic and explains (a step list, a code line); the worse one is a
dismissive or off-topic line, so a small model fine-tuned on the train rows should score the val rows above chance.

    python scripts/make_preference_sample.py            # deterministic: the same bytes every run
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data_prep" / "sample" / "helpsteer2" / "preference.jsonl.gz"

TOPICS = [("sort a list of numbers", "Python", "sorted(xs)"), ("read a CSV file", "Python", "csv.reader(open(path))"),
          ("reverse a string", "JavaScript", "s.split('').reverse().join('')"), ("count words in a file", "Bash", "wc -w file.txt"),
          ("parse JSON", "Go", "json.Unmarshal(data, &v)"), ("format a date", "Python", "d.strftime('%Y-%m-%d')"),
          ("remove duplicates from a list", "Python", "list(dict.fromkeys(xs))"), ("find the largest file", "Bash", "du -a | sort -n | tail -1"),
          ("join two tables", "SQL", "SELECT * FROM a JOIN b ON a.id = b.id"), ("check if a key exists", "Python", "key in d"),
          ("measure elapsed time", "Python", "time.perf_counter()"), ("round a number", "JavaScript", "Math.round(x * 100) / 100"),
          ("lowercase a string", "Rust", "s.to_lowercase()"), ("list files in a folder", "Python", "os.listdir(path)"),
          ("merge two dictionaries", "Python", "{**a, **b}"), ("get the current directory", "Bash", "pwd"),
          ("split a string on commas", "Go", "strings.Split(s, \",\")"), ("convert a string to an integer", "Java", "Integer.parseInt(s)"),
          ("sum a column", "SQL", "SELECT SUM(amount) FROM t"), ("sleep for a second", "Python", "time.sleep(1)")]
BAD = ["Just search for it online.", "I am not sure, maybe try something else.", "That is not possible.",
       "Why would you want to do that?", "Use a different language.", "lol no idea"]


def good(task: str, lang: str, code: str, rng: random.Random) -> str:
    steps = [f"To {task} in {lang}, use `{code}`.", f"1. Start from your input.\n2. Call `{code}`.\n3. Check the result.",
             f"This works because the standard library already does it for you: `{code}`."]
    return " ".join(rng.sample(steps, 2))


def row(split: str, prompt: str, better: str, worse: str, strength: int, rng: random.Random) -> dict:
    first_better = strength < 0
    r1, r2 = (better, worse) if first_better or strength == 0 else (worse, better)
    if strength == 0:
        statement, elaboration = "@Response 1 and @Response 2 are equally good.", "Both answer the question."
    else:
        statement = f"@Response {1 if first_better else 2} is {'much ' if abs(strength) == 3 else ''}better than " \
                    f"@Response {2 if first_better else 1}."
        elaboration = "It answers the question with working code; the other does not help."
    votes = [max(-3, min(3, strength + rng.choice((-1, 0, 0, 1)))) for _ in range(3)]
    return {"split": split, "prompt": prompt, "response_1": r1, "response_2": r2, "preference_strength": strength,
            "preference_statement": statement, "preference_elaboration": elaboration,
            "three_most_similar_preferences": [{"statement": statement, "elaboration": elaboration, "strength": s} for s in votes],
            "all_preferences_unprocessed": votes}


def main() -> None:
    rng = random.Random(0)
    rows = []
    for i, (task, lang, code) in enumerate(TOPICS):
        for variant in range(3):
            prompt = f"How do I {task} in {lang}?" if variant == 0 else f"What is the quickest way to {task} in {lang}?" \
                if variant == 1 else f"I need to {task}.\n<extra_id_1>Assistant\nWhich language?\n<extra_id_1>User\n{lang}, please."
            split = "val" if i % 5 == 4 else "train"
            strength = 0 if (i + variant) % 11 == 0 else rng.choice((-3, -2, -1, 1, 2, 3))
            rows.append(row(split, prompt, good(task, lang, code, rng), rng.choice(BAD), strength, rng))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    print(f"wrote {OUT}: {len(rows)} rows, {sum(r['split'] == 'val' for r in rows)} val, "
          f"{sum(r['preference_strength'] == 0 for r in rows)} ties")


if __name__ == "__main__":
    main()
