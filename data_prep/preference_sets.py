"""Public preference sets (and a user's own pairs) as `worldpm collect` inputs, each read exactly as its publisher ships it.

    worldpm collect source=helpsteer2 source.path=preference.jsonl.gz output_dir=data/hs2
    worldpm collect source=ultrafeedback source.path=ultrafeedback_binarized/data output_dir=data/uf
    worldpm collect source=preference source.path=my_pairs.jsonl output_dir=data/mine

| source | what it reads | pairs |
|---|---|---|
| helpsteer2 | `source.kind=preference`: HelpSteer2-Preference `preference.jsonl.gz` (`split`, `prompt`, `response_1/2`, `preference_strength` -3..3: < 0 response_1 better, > 0 response_2) | one per row; \\|strength\\| is the chosen score (0 the rejected one), so `loss.margin_column=score_gap` is BT with the strength as margin; strength 0 (a tie) out; its `split` column (train / val) kept |
| | `source.kind=ratings`: `train.jsonl.gz` / `validation.jsonl.gz` (`prompt`, `response`, 0-4 `helpfulness`, `correctness`, `coherence`, `complexity`, `verbosity`; two consecutive rows per prompt) | by the weighted rating (`source.attribute_weights`), ties out |
| ultrafeedback | raw openbmb/UltraFeedback (`instruction`, `completions[*]` with `overall_score`, `fine-grained_score` and `annotations.<aspect>.Rating` as strings, "N/A" included) | by `source.score` among the completions, ties out, `pairs.max_per_question` per prompt |
| | HuggingFaceH4/ultrafeedback_binarized (`chosen`/`rejected` message lists, `score_chosen`/`score_rejected`; `train_prefs` / `test_prefs`) | one per row; equal scores (its builder allows them) out |
| skywork, rlhflow | `chosen` and `rejected` as full conversations sharing their earlier turns (+ `source` / `chosen_score`, `rejected_score`) | one per row; the shared turns are the prompt, multi-turn kept |
| shp | stanfordnlp/SHP (`history`, `human_ref_A/B`, `labels`, `score_A/B`, `score_ratio`, `domain`) | one per row with `score_ratio` >= `source.min_score_ratio` (2, as SteamSHP) |
| hh_rlhf | Anthropic HH-RLHF (`chosen` / `rejected` transcripts of `\\n\\nHuman: ` / `\\n\\nAssistant: ` turns) | one per row; the shared turns are the prompt |
| preference | TRL's preference formats: standard (strings) or conversational (messages), explicit `prompt` or implicit (shared turns); field names in `source.fields` | one per row |

Files: `.jsonl`, `.json` (a list), `.parquet`, each optionally `.gz`; a file, a directory (recursively), or a hub id read with
`datasets` (needs the network or a warm cache). A file's split and domain come from its name where the set encodes them there
(`test_prefs`, `validation`, `test`, HH's `harmless-base/`...). Every row is accounted for: kept, or dropped with a reason
(`tie`, `empty`, `malformed`, `row_too_large`, `score_ratio_below_min`, `other_kind`) and a sample in rejects.jsonl. A file that
is not the set's format at all ends the run with one line naming the file and its first record.

A record becomes a `Parsed`: its prompt (a list of messages), its responses with their scores, and either the pairs it gives
(indices into the responses) or none (pair them by score, like forum answers). The collector groups records by prompt, so a
prompt's pairs form one thread: the split is a function of the prompt (never on both sides), dedup and the contamination
audit apply unchanged (data_prep.collect). Pure python + pyarrow: no torch, no worldpm.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from data_prep.errors import CollectError
from data_prep.pairing import Reply, Thread

SETS = ("helpsteer2", "ultrafeedback", "skywork", "rlhflow", "shp", "hh_rlhf", "preference")
SUFFIXES = (".jsonl", ".json", ".parquet", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")
ROLES = ("system", "user", "assistant")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# HelpSteer2 marks the turns of a multi-turn prompt with these lines (the first turn has no marker)
_HS2_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n?")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


class Dropped(Exception):
    """One record dropped, with its reason (counted in rows.records, sampled in rejects.jsonl)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


class WrongFile(Exception):
    """A record that no file of this set could hold (not JSON, not an object, none of the set's fields)."""


@dataclass
class Parsed:
    """What one record gives: its prompt, its responses (text, score, meta) and the pairs among them (chosen index, rejected
    index, chosen score, rejected score, pair meta), or `pairs=None` to pair the responses by score."""

    prompt: list[dict]
    responses: list[dict]
    pairs: list[tuple[int, int, float, float, dict]] | None
    domain: str
    split: str | None = None           # the set's own split: train | test | None (then a hash of the prompt decides)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InputFile:
    """One input: a local file, or a hub dataset (`hub`: its id) read through `datasets`."""

    path: str
    split: str | None     # what the file's name says: train | test | None
    domain: str | None    # a subset named by the file's directory (HH-RLHF's harmless-base, ...)
    hub: bool = False


# ------------------------------------------------------------------------------------------------------------- helpers
def conversation_hs2(prompt: str) -> list[dict]:
    """A HelpSteer2 prompt as turns: `<extra_id_1>User` / `<extra_id_1>Assistant` lines start the later turns."""
    parts = _HS2_TURN.split(prompt)
    turns = [{"role": "user", "content": parts[0]}]
    for role, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": role.lower(), "content": content})
    return turns


def conversation_hh(transcript: str) -> list[dict]:
    """An HH-RLHF transcript (`\\n\\nHuman: ...\\n\\nAssistant: ...`) as turns; Dropped when it does not start with a human turn."""
    if not isinstance(transcript, str):
        raise Dropped("malformed", f"transcript is {type(transcript).__name__}, not a string")
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise Dropped("malformed", "transcript does not start with '\\n\\nHuman: '")
    return [{"role": "user" if role == "Human" else "assistant", "content": content}
            for role, content in zip(parts[1::2], parts[2::2])]


def messages(value: Any, key: str) -> list[dict]:
    """A conversation as [{role, content}] (extra keys dropped); a string is one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise Dropped("malformed", f"{key} is not a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise Dropped("malformed", f"{key}[{i}] is not a {{role: system|user|assistant, content: str}} message")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def split_shared(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Two full conversations sharing their earlier turns -> (prompt, chosen reply, rejected reply)."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Dropped("malformed", "chosen and rejected must end with the assistant's reply")
    if chosen[:-1] != rejected[:-1]:
        raise Dropped("malformed", "chosen and rejected differ before their last reply (no shared prompt)")
    if len(chosen) < 2:
        raise Dropped("malformed", "no prompt turn before the reply")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def number(value: Any, what: str) -> float:
    """A finite number, also from a numeric string ("4", "7.5"); Dropped otherwise."""
    if isinstance(value, list) and len(value) == 1:  # some pipeline outputs wrap a value in a one-element list
        value = value[0]
    if isinstance(value, bool):
        raise Dropped("malformed", f"{what} is a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise Dropped("malformed", f"{what} is {value!r}, not a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Dropped("malformed", f"{what} is {value!r}, not a finite number")
    return float(value)


def text_field(rec: Mapping, key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise Dropped("malformed", f"missing field {key!r}" if value is None else f"{key} is {type(value).__name__}, not a string")
    return value


def one_pair(prompt: list[dict], chosen: str, rejected: str, cs: float, rs: float, domain: str, split: str | None,
             pair_meta: dict | None = None, meta: dict | None = None) -> Parsed:
    """The common case: one record, one pair. Empty replies and identical ones (a tie) are dropped."""
    if not chosen.strip() or not rejected.strip():
        raise Dropped("empty", f"the {'chosen' if not chosen.strip() else 'rejected'} reply is empty")
    if chosen == rejected:
        raise Dropped("tie", "chosen and rejected are the same text")
    if not any(m["content"].strip() for m in prompt):
        raise Dropped("empty", "prompt")
    return Parsed(prompt, [{"text": chosen, "score": cs}, {"text": rejected, "score": rs}],
                  [(0, 1, cs, rs, pair_meta or {})], domain, split, meta or {})


def prompt_key(prompt: list[dict]) -> bytes:
    """What groups records into one thread: the prompt's turns (role and text)."""
    return hashlib.sha256(json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False).encode()).digest()[:16]


def reply_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------- parsers
def _hs2_preference(rec: Mapping, f: InputFile, cfg) -> Parsed:
    if "preference_strength" not in rec:
        raise Dropped("other_kind", "a ratings row (no preference_strength) in a source.kind=preference run")
    prompt, a, b = text_field(rec, "prompt"), text_field(rec, "response_1"), text_field(rec, "response_2")
    strength = number(rec.get("preference_strength"), "preference_strength")
    if strength != int(strength) or not -3 <= strength <= 3:
        raise Dropped("malformed", f"preference_strength {strength:g} is not an integer in -3..3")
    if strength == 0:
        raise Dropped("tie", "preference_strength 0")
    split = rec.get("split")
    split = None if split is None else ("test" if str(split) in ("val", "validation", "test") else "train")
    chosen, rejected = (b, a) if strength > 0 else (a, b)
    meta = {"preference_strength": int(strength), "chosen_response": 2 if strength > 0 else 1,
            "preference_statement": rec.get("preference_statement")}
    return one_pair(conversation_hs2(prompt), chosen, rejected, abs(strength), 0.0, "helpsteer2", split or f.split, meta,
                    {"licence": "CC-BY-4.0 (nvidia/HelpSteer2)"})


def _hs2_ratings(rec: Mapping, f: InputFile, cfg) -> Parsed:
    if "preference_strength" in rec:
        raise Dropped("other_kind", "a preference row in a source.kind=ratings run")
    prompt, response = text_field(rec, "prompt"), text_field(rec, "response")
    weights = dict(cfg.attribute_weights)
    ratings = {}
    for name, weight in weights.items():
        if weight:
            if rec.get(name) is None:
                raise Dropped("malformed", f"missing rating {name!r}")
            ratings[name] = number(rec[name], name)
    if not response.strip():
        raise Dropped("empty", "the response is empty")
    score = sum(float(w) * ratings[k] for k, w in weights.items() if w)
    return Parsed(conversation_hs2(prompt), [{"text": response, "score": score, "meta": {"ratings": ratings}}], None,
                  "helpsteer2", f.split, {"licence": "CC-BY-4.0 (nvidia/HelpSteer2)"})


def _uf_score(c: Mapping, how: str) -> float | None:
    """A completion's score for pairing: overall_score, fine-grained_score, or the mean of its aspects' ratings (strings;
    "N/A" left out). None when it has none."""
    if how == "annotations":
        ann = c.get("annotations")
        if not isinstance(ann, Mapping):
            return None
        values = []
        for aspect in UF_ASPECTS:
            a = ann.get(aspect)
            a = a[0] if isinstance(a, list) and len(a) == 1 else a
            rating = a.get("Rating") if isinstance(a, Mapping) else None
            if rating is None or str(rating).strip().upper() == "N/A":
                continue
            values.append(number(rating, f"annotations.{aspect}.Rating"))
        return sum(values) / len(values) if values else None
    value = c.get(how)
    if value is None or (isinstance(value, str) and value.strip().upper() == "N/A"):
        return None
    return number(value, how)


def _ultrafeedback(rec: Mapping, f: InputFile, cfg) -> Parsed:
    if "completions" in rec:  # the raw set
        instruction = text_field(rec, "instruction")
        completions = rec.get("completions")
        if not isinstance(completions, list):
            raise Dropped("malformed", "completions is not a list")
        responses = []
        for i, c in enumerate(completions):
            if not isinstance(c, Mapping) or not isinstance(c.get("response"), str):
                raise Dropped("malformed", f"completion {i} has no string response")
            responses.append({"text": c["response"], "score": _uf_score(c, str(cfg.score)),
                              "meta": {"model": c.get("model"), "principle": c.get("principle")}})
        if not instruction.strip():
            raise Dropped("empty", "instruction")
        return Parsed([{"role": "user", "content": instruction}], responses, None, str(rec.get("source") or "ultrafeedback"),
                      f.split, {"licence": "MIT (openbmb/UltraFeedback)", "score": str(cfg.score)})
    if "chosen" in rec:  # ultrafeedback_binarized
        prompt, chosen, rejected = split_shared(messages(rec.get("chosen"), "chosen"), messages(rec.get("rejected"), "rejected"))
        cs, rs = number(rec.get("score_chosen"), "score_chosen"), number(rec.get("score_rejected"), "score_rejected")
        if cs == rs:
            raise Dropped("tie", f"score_chosen = score_rejected = {cs:g}")
        return one_pair(prompt, chosen, rejected, cs, rs, "ultrafeedback_binarized", f.split,
                        {"prompt_id": rec.get("prompt_id")}, {"licence": "MIT (HuggingFaceH4/ultrafeedback_binarized)"})
    raise WrongFile("neither a raw UltraFeedback record (instruction, completions) nor a binarized one (chosen, rejected)")


def _shared_turns(rec: Mapping, f: InputFile, cfg, source: str) -> Parsed:
    if "chosen" not in rec or "rejected" not in rec:
        raise Dropped("malformed", "missing field 'chosen' or 'rejected'")
    prompt, chosen, rejected = split_shared(messages(rec["chosen"], "chosen"), messages(rec["rejected"], "rejected"))
    cs = number(rec["chosen_score"], "chosen_score") if rec.get("chosen_score") is not None else 1.0
    rs = number(rec["rejected_score"], "rejected_score") if rec.get("rejected_score") is not None else 0.0
    if "chosen_score" in rec and cs == rs:
        raise Dropped("tie", f"chosen_score = rejected_score = {cs:g}")
    domain = str(rec.get("source") or f.domain or source)
    return one_pair(prompt, chosen, rejected, cs, rs, domain, f.split, {}, {"licence": "per source (see the set's card)"})


def _skywork(rec, f, cfg):
    return _shared_turns(rec, f, cfg, "skywork")


def _rlhflow(rec, f, cfg):
    return _shared_turns(rec, f, cfg, "rlhflow")


def _shp(rec: Mapping, f: InputFile, cfg) -> Parsed:
    history, a, b = text_field(rec, "history"), text_field(rec, "human_ref_A"), text_field(rec, "human_ref_B")
    label = rec.get("labels")
    if label not in (0, 1) or isinstance(label, bool):
        raise Dropped("malformed", f"labels is {label!r}, not 0 or 1")
    ratio = number(rec.get("score_ratio"), "score_ratio")
    if ratio < float(cfg.min_score_ratio):
        raise Dropped("score_ratio_below_min", f"score_ratio {ratio:g} < {cfg.min_score_ratio}")
    sa, sb = number(rec.get("score_A"), "score_A"), number(rec.get("score_B"), "score_B")
    (chosen, cs, cid), (rejected, rs, rid) = ((a, sa, "A"), (b, sb, "B")) if label == 1 else ((b, sb, "B"), (a, sa, "A"))
    domain = str(rec.get("domain") or "")
    subreddit, _, split = domain.rpartition("_")
    split = {"train": "train", "validation": "test", "test": "test"}.get(split, f.split)
    meta = {"post_id": rec.get("post_id"), "score_ratio": ratio, "chosen_comment": rec.get(f"c_root_id_{cid}"),
            "rejected_comment": rec.get(f"c_root_id_{rid}")}
    return one_pair([{"role": "user", "content": history}], chosen, rejected, cs, rs, subreddit or "shp", split, meta,
                    {"post_id": rec.get("post_id"), "licence": "none granted (Reddit API terms; stanfordnlp/SHP card)"})


def _hh_rlhf(rec: Mapping, f: InputFile, cfg) -> Parsed:
    if "chosen" not in rec or "rejected" not in rec:
        raise Dropped("malformed", "missing field 'chosen' or 'rejected'")
    chosen, rejected = conversation_hh(rec["chosen"]), conversation_hh(rec["rejected"])
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Dropped("malformed", "transcript does not end with an Assistant turn")
    prompt, c, r = split_shared(chosen, rejected)
    return one_pair(prompt, c.strip(), r.strip(), 1.0, 0.0, f.domain or "hh_rlhf", f.split, {},
                    {"licence": "MIT (Anthropic/hh-rlhf)"})


def _preference(rec: Mapping, f: InputFile, cfg) -> Parsed:
    names = dict(cfg.fields)
    ck, rk, pk = names.get("chosen") or "chosen", names.get("rejected") or "rejected", names.get("prompt") or "prompt"
    if ck not in rec or rk not in rec:
        raise Dropped("malformed", f"missing field {ck!r} or {rk!r}")
    chosen, rejected, prompt = rec[ck], rec[rk], rec.get(pk)
    if prompt is not None:  # explicit prompt: standard (strings) or conversational (a list of assistant messages)
        prompt = messages(prompt, pk)
        c = chosen if isinstance(chosen, str) else _last_reply(messages(chosen, ck), ck)
        r = rejected if isinstance(rejected, str) else _last_reply(messages(rejected, rk), rk)
    elif isinstance(chosen, str) and isinstance(rejected, str):  # standard, implicit prompt: the common prefix
        cut = _common_prefix(chosen, rejected)
        prompt, c, r = [{"role": "user", "content": chosen[:cut]}], chosen[cut:], rejected[cut:]
    else:  # conversational, implicit prompt: the shared turns
        prompt, c, r = split_shared(messages(chosen, ck), messages(rejected, rk))
    scores = [names.get("chosen_score"), names.get("rejected_score")]
    cs = number(rec.get(scores[0]), scores[0]) if scores[0] and rec.get(scores[0]) is not None else 1.0
    rs = number(rec.get(scores[1]), scores[1]) if scores[1] and rec.get(scores[1]) is not None else 0.0
    if scores[0] and scores[1] and rec.get(scores[0]) is not None and cs == rs:
        raise Dropped("tie", f"{scores[0]} = {scores[1]} = {cs:g}")
    split = f.split
    if names.get("split") and rec.get(names["split"]) is not None:
        split = "test" if str(rec[names["split"]]) in ("test", "val", "validation", "eval") else "train"
    domain = str(rec.get(names["domain"]) or "") if names.get("domain") else ""
    return one_pair(prompt, c, r, cs, rs, domain or f.domain or "preference", split)


def _last_reply(conv: list[dict], key: str) -> str:
    if conv[-1]["role"] != "assistant":
        raise Dropped("malformed", f"{key} does not end with an assistant message")
    return conv[-1]["content"]


def _common_prefix(a: str, b: str) -> int:
    """Where two strings first differ, moved back to the start of the word, and the space before it left to the replies
    (as TRL's extract_prompt does: "The sky is blue." / "The sky is green." -> "The sky is" + " blue." / " green.")."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n - 1 if n > 0 and a[n - 1] == " " else n


PARSERS: dict[str, Callable[[Mapping, InputFile, Any], Parsed]] = {
    "ultrafeedback": _ultrafeedback, "skywork": _skywork, "rlhflow": _rlhflow, "shp": _shp, "hh_rlhf": _hh_rlhf,
    "preference": _preference,
}
# fields that show a record belongs to the set at all: a file whose first record has none of them is the wrong file
SIGNATURE = {
    "helpsteer2": {"prompt", "response", "response_1", "preference_strength"},
    "ultrafeedback": {"instruction", "completions", "chosen", "score_chosen"},
    "skywork": {"chosen", "rejected"}, "rlhflow": {"chosen", "rejected"}, "shp": {"history", "human_ref_A", "labels"},
    "hh_rlhf": {"chosen", "rejected"}, "preference": set(),
}


def parser_for(source: str, cfg) -> Callable[[Mapping, InputFile, Any], Parsed]:
    if source == "helpsteer2":
        return _hs2_preference if cfg.kind == "preference" else _hs2_ratings
    return PARSERS[source]


def parse(source: str, rec: Any, f: InputFile, cfg) -> Parsed:
    """One record -> Parsed; Dropped for a bad record, WrongFile for one no file of the set could hold."""
    if not isinstance(rec, Mapping):
        raise WrongFile(f"a JSON {type(rec).__name__}, not an object")
    signature = SIGNATURE[source] or {v for v in dict(cfg.fields).values() if v}
    if not signature & set(rec):
        raise WrongFile(f"none of the fields {sorted(signature)} (it has {sorted(rec)[:8]})")
    return parser_for(source, cfg)(rec, f, cfg)


# ------------------------------------------------------------------------------------------------------------- input files
def _data_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(SUFFIXES) and not p.name.startswith(".")


def _split_from_name(path: Path) -> str | None:
    """`test_prefs-00000.parquet`, `validation.jsonl.gz`, SHP's `test.json`: test; `train*`: train; else unknown."""
    name = path.name.lower()
    for word, split in (("test", "test"), ("validation", "test"), ("val", "test"), ("train", "train")):
        if re.search(rf"(^|[^a-z]){word}([^a-z]|$)", name):
            return split
    return None


def discover(path: str, source: str, cfg) -> list[InputFile]:
    """The input files of `source.path` (sorted; a directory is searched recursively) or its hub id."""
    p = Path(path).expanduser()
    if not p.exists():
        if path.startswith((".", "/", "~")) or path.lower().endswith(SUFFIXES) or not _HUB_ID.fullmatch(path):
            raise CollectError(f"source.path={path} does not exist")
        return [InputFile(path, hub_split(cfg), None, hub=True)]
    if p.is_file():
        if not _data_file(p):
            raise CollectError(f"source.path={path}: expected a {', '.join(SUFFIXES)} file or a directory of them")
        files = [p]
    else:
        files = sorted(f for f in p.rglob("*") if _data_file(f) and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if source == "ultrafeedback" and any("_prefs" in f.name for f in files):  # the binarized set: only its preference splits
        files = [f for f in files if "_prefs" in f.name]
    if source == "helpsteer2" and p.is_dir():  # the repo holds both kinds (and disagreements/): read the one asked for
        want = (lambda f: f.name.startswith("preference")) if cfg.kind == "preference" else \
            (lambda f: f.name.startswith(("train", "validation")))
        files = [f for f in files if want(f)]
    if not files:
        raise CollectError(f"source.path={path}: no {source} data files ({', '.join(SUFFIXES)}) found")
    out = []
    for f in files:
        domain = f.parent.name if source == "hh_rlhf" and p.is_dir() and f.parent != p else None
        out.append(InputFile(str(f), _split_from_name(f), domain))
    return out


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def records(f: InputFile, cfg, max_row_bytes: int) -> Iterator[tuple[int, Any]]:
    """(record number, record) of one input: a line of JSON lines, an element of a JSON list, a parquet row, a hub row.
    A record that is not JSON is yielded as a `Dropped("malformed")`, one over `max_row_bytes` as `Dropped("row_too_large")`.
    A file that cannot be read (truncated gzip, broken parquet) raises a one-line CollectError naming file and position."""
    if f.hub:
        yield from _hub_records(f, cfg)
        return
    path = Path(f.path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            n = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise CollectError(f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        return
    base = name[:-3] if name.endswith(".gz") else name
    line_no = 0
    try:
        with _open_text(path) as raw:
            if base.endswith(".json") and raw.read(1024).lstrip().startswith(b"["):  # a JSON list (read whole: such files are small)
                raw.seek(0)
                try:
                    doc = json.loads(raw.read())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise CollectError(f"{path}: not valid JSON ({exc})") from None
                for i, rec in enumerate(doc, 1):
                    yield i, rec
                return
            raw.seek(0)
            for line in raw:  # a .json that is really JSON lines is read as such
                line_no += 1
                if len(line) > max_row_bytes:
                    yield line_no, Dropped("row_too_large", f"{len(line)} bytes > source.max_row_bytes={max_row_bytes}")
                    continue
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield line_no, Dropped("malformed", f"not valid JSON ({exc})")
    except (EOFError, OSError, zlib.error) as exc:  # gzip: a truncated or corrupt stream
        raise CollectError(f"{path}: record {line_no + 1}: cannot be read ({type(exc).__name__}: {exc})") from None


def _hub_records(f: InputFile, cfg) -> Iterator[tuple[int, Any]]:
    import datasets  # no torch: a data dependency of worldpm (needs the network or a warm cache)

    kwargs = {k: v for k, v in (("name", cfg.hub_name), ("data_files", cfg.hub_data_files), ("split", cfg.hub_split or "train"))
              if v}
    try:
        ds = datasets.load_dataset(f.path, **kwargs)
    except Exception as exc:  # offline, unknown repo or split
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CollectError(f"source.path={f.path} is not a local file or directory and could not be loaded from the hub "
                           f"({type(exc).__name__}: {msg})") from None
    for i, row in enumerate(ds, 1):
        yield i, row


def hub_split(cfg) -> str | None:
    """The split a hub dataset's rows belong to, from source.hub_split's name."""
    return _split_from_name(Path(str(cfg.hub_split or "")))


# ------------------------------------------------------------------------------------------------------------- the store
# Phase 1 writes each input's kept records into a store of its own (one task per input, in parallel); `merge_stores` gathers
# them into one store whose threads are the distinct prompts, numbered in order of first appearance; phase 2 reads them back
# in id ranges, a prompt with all its records (data_prep.collect).
RECORDS = "CREATE TABLE records (pos INTEGER PRIMARY KEY, key BLOB NOT NULL, data TEXT NOT NULL)"
BLOCK = "rows.records"


def ingest_file(f: InputFile, db_path: Path, source: str, cfg, stats, progress) -> dict:
    """Phase 1: one input's records -> parse -> its store. Counts `rows.records` (read, record, dropped by reason) and the
    kept records' own split labels in `source_split`."""
    from data_prep.store import connect

    db_path.unlink(missing_ok=True)
    db = connect(db_path)
    db.execute(RECORDS)
    pending, kept, read, first, first_bad = [], 0, 0, True, None
    try:
        for n, rec in records(f, cfg, int(cfg.max_row_bytes)):
            stats.add(BLOCK, "read")
            read += 1
            where = {"file": f.path, "line": n}
            try:
                if isinstance(rec, Dropped):
                    if first and rec.reason == "malformed":  # a first line that is not JSON: not a JSON-lines file at all
                        raise WrongFile(rec.detail)
                    raise rec
                parsed = parse(source, rec, f, cfg)
            except WrongFile as exc:
                if first:
                    raise CollectError(f"{f.path}: record {n}: not a {source} file: {exc}") from None
                exc = Dropped("malformed", str(exc))
                stats.drop(BLOCK, exc.reason, {**where, "detail": exc.detail})
                first_bad = first_bad or (n, exc.detail)
                continue
            except Dropped as exc:
                stats.drop(BLOCK, exc.reason, {**where, "detail": exc.detail})
                if exc.reason in ("malformed", "other_kind"):
                    first_bad = first_bad or (n, exc.detail)
                continue
            finally:
                first = False
                progress(0, 1)
            stats.add(BLOCK, "record")
            stats.add("source_split", parsed.split or "none")
            kept += 1
            data = {"prompt": parsed.prompt, "responses": parsed.responses, "pairs": parsed.pairs, "domain": parsed.domain,
                    "split": parsed.split, "meta": parsed.meta, "file": f.path, "line": n}
            pending.append((n, prompt_key(parsed.prompt), json.dumps(data, ensure_ascii=False)))
            if len(pending) >= 2000:
                with db:
                    db.executemany("INSERT INTO records VALUES (?, ?, ?)", pending)
                pending = []
        with db:
            db.executemany("INSERT INTO records VALUES (?, ?, ?)", pending)
    finally:
        db.close()
    if kept == 0 and first_bad is not None:
        kind = f" (source.kind={cfg.kind})" if source == "helpsteer2" else ""
        raise CollectError(f"{f.path}: none of its {read} records is a usable {source} record{kind}; "
                           f"record {first_bad[0]}: {first_bad[1]}")
    return {"db": str(db_path), "file": f.path}


def merge_stores(parts: list[dict], db_path: Path) -> int:
    """One store of all inputs (in the given, sorted order): `threads` (one per distinct prompt, ids in order of first
    appearance) and `records` (each under its prompt's thread). Returns the number of threads."""
    from data_prep.store import connect

    db_path.unlink(missing_ok=True)
    db = connect(db_path)
    db.execute("CREATE TABLE threads (id INTEGER PRIMARY KEY, key BLOB UNIQUE NOT NULL)")
    db.execute("CREATE TABLE records (thread INTEGER NOT NULL, pos INTEGER NOT NULL, data TEXT NOT NULL)")
    for i, part in enumerate(parts):
        db.execute("ATTACH DATABASE ? AS part", (part["db"],))
        with db:
            db.execute("INSERT OR IGNORE INTO threads(key) SELECT key FROM part.records ORDER BY pos")
            db.execute("INSERT INTO records SELECT t.id, ? * 1099511627776 + p.pos, p.data FROM part.records p "
                       "JOIN threads t ON t.key = p.key ORDER BY p.pos", (i,))
        db.execute("DETACH DATABASE part")
        Path(part["db"]).unlink(missing_ok=True)
    with db:
        db.execute("CREATE INDEX records_thread ON records(thread, pos)")
    n = db.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
    db.close()
    return n


def prompt_threads(source: str, db_path: Path, lo: int, hi: int, cfg, stats) -> Iterator:
    """Phase 2: the prompts of one id range, each a Thread of its distinct replies and the pairs its records give (or none:
    pair by score). Counts `prompt_groups` (total, replies, duplicate replies merged), replies without a score in `replies`
    (unscored), and prompts whose records carry both train and test labels in `source_split`."""
    from data_prep.store import connect

    db = connect(db_path, readonly=True)
    try:
        rows = db.execute("SELECT r.thread, t.key, r.data FROM records r JOIN threads t ON t.id = r.thread "
                          "WHERE r.thread BETWEEN ? AND ? ORDER BY r.thread, r.pos", (lo, hi))
        group, current = [], None
        for tid, key, data in rows:
            if tid != current and group:
                yield _thread(source, group, cfg, stats)
                group = []
            current = tid
            group.append((key, json.loads(data)))
        if group:
            yield _thread(source, group, cfg, stats)
    finally:
        db.close()


def _thread(source: str, group: list[tuple[bytes, dict]], cfg, stats) -> Thread:
    key, first = group[0]
    given = any(rec["pairs"] is not None for _, rec in group)
    replies: dict[str, Reply] = {}
    pairs = []
    merged = dropped = 0
    for _, rec in group:
        if (rec["pairs"] is not None) != given:  # a prompt both as given pairs and as scored responses: keep the pairs
            stats.drop("replies", "other_format_for_prompt", {"file": rec["file"], "line": rec["line"]}, len(rec["responses"]))
            dropped += len(rec["responses"])
            continue
        ids = []
        for r in rec["responses"]:
            rid = reply_id(r["text"])
            ids.append(rid)
            if rid in replies:
                merged += 1
                continue
            if not given and r["score"] is None:
                stats.drop("replies", "unscored", {"file": rec["file"], "line": rec["line"], "id": rid})
                dropped += 1
                continue
            replies[rid] = Reply(rid, r["text"], r["score"], meta={**(r.get("meta") or {}), "line": rec["line"]})
        for c, w, cs, rs, meta in rec["pairs"] or ():
            pairs.append((ids[c], ids[w], cs, rs, {**meta, "file": Path(rec["file"]).name, "line": rec["line"]}))
    splits = {rec["split"] for _, rec in group}
    if {"train", "test"} <= splits:
        stats.add("source_split", "prompt_in_both_moved_to_test")
    stats.add("prompt_groups", "total")
    stats.add("prompt_groups", "records", len(group))
    stats.add("prompt_groups", "replies", len(replies) + dropped)
    stats.add("prompt_groups", "duplicate_replies_merged", merged)
    prompt = first["prompt"]
    thread = Thread(source, first["domain"], key.hex(), "\n\n".join(m["content"] for m in prompt), list(replies.values()),
                    dict(first["meta"]), {"file": first["file"], "line": first["line"]})
    thread.messages = prompt
    thread.given_pairs = pairs if given else None
    thread.source_split = "test" if "test" in splits else ("train" if "train" in splits else None)
    return thread
