"""PPE, Preference Proxy Evaluations (lmarena): a human-preference set and five correctness best-of-K sets.

- `human_preference` (lmarena-ai/PPE-Human-Preference-V1, split test): Arena votes; `winner` model_a -> response_1 preferred,
  model_b -> response_2; ties ("tie", "tie (bothbad)") are excluded and counted. Official: pairwise accuracy, also per prompt flag
  (hard_prompt, is_code, math_prompt, ...) where the record has it.
- `mmlu_pro`, `math`, `gpqa`, `mbpp_plus`, `ifeval` (lmarena-ai/PPE-<set>-Best-of-K, split train): `response_1..response_K` with
  correctness `scores`. All K responses of a prompt are scored together. Accuracy and BT loss use (correct, incorrect) pairs:
  the set's own `sampled_conflict_pairs` (`correctness_pairs: sampled`, the default; 0-based response indices, oriented by
  correctness) or every (correct, incorrect) pair (`all`). Official per set: pairwise accuracy; the best-of-K curve for K = 1..K,
  computed exactly as the expectation over uniformly random K-subsets (metrics.best_of_k) and averaged over prompts, with its end
  score (K = max) and maximum; the oracle curve (some drawn response is correct); ROC-AUC of rewards for correctness pooled
  over the set's responses, and the mean of per-prompt AUCs (rewards compare only within a prompt).
  `correctness_mean` averages each of those over the sets present (PPE aggregates by mean over the five benchmarks).
The Arena-ranking metrics of PPE's human set (Spearman/Kendall, separability, Brier) need per-model ratings and are not computed.

Local layout: `path` is a directory holding, per set, a file `<set>.jsonl|.json|.parquet` or a folder named `<set>` or by its
hub name (a downloaded snapshot). Hub: `path` is the organisation (lmarena-ai); each set loads `<path>/<hub>` with its split.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item, group_indices
from worldpm.eval.metrics import accuracy_by, accuracy_of, best_of_k_curve, roc_auc
from worldpm.eval.benchmarks.sources import Record, data_files, is_data_file, messages, need, read_hub, read_local

log = logging.getLogger("worldpm.eval")
FLAGS = ("hard_prompt", "easy_prompt", "if_prompt", "math_prompt", "is_code", "is_refusal")


# official keys the report shows (dotted, * wildcards)
HEADLINE = ("*.accuracy", "*.end_score", "*.max_achieved", "*.roc_auc", "correctness_mean.*")

def set_records(bcfg: Mapping, name: str, key: str, spec: Mapping) -> list[Record]:
    root = str(bcfg.get("path") or "")
    local = Path(root).expanduser()
    if not root:
        raise UserError(f"benchmark {name}: no path set (benchmark.{name}.path=<directory> or the hub organisation lmarena-ai)")
    if local.is_dir():
        names = {key.lower(), str(spec.get("hub", "")).lower()}
        for candidate in sorted(local.iterdir()):
            stem = candidate.name.lower()
            for suffix in (".gz", ".parquet", ".jsonl", ".json"):
                stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
            if stem in names and (is_data_file(candidate) or candidate.is_dir()):
                files = [candidate] if candidate.is_file() else data_files(candidate, name, prefer=spec.get("split"))
                return [r for f in files for r in read_local(f)]
        raise UserError(f"benchmark {name}: no file or folder for set {key!r} in {local} (expected {key}.jsonl|.json|.parquet or "
                        f"a folder named {key} or {spec.get('hub')}; drop the set with ~benchmark.{name}.subsets.{key})")
    if local.exists() or root.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+", root):
        raise UserError(f"benchmark {name}: path {root} should be a directory or a hub organisation such as lmarena-ai")
    return read_hub(f"{root}/{spec['hub']}", name, split=spec.get("split"))


def _human_items(records: list[Record], key: str) -> tuple[list[Item], int]:
    items, ties = [], 0
    for rec in records:
        prompt = need(rec, "prompt", (str, list), "a string or a list of messages")
        conv = messages(rec, prompt, "prompt")
        a, b = need(rec, "response_1", str), need(rec, "response_2", str)
        winner = need(rec, "winner", str)
        if "tie" in winner:
            ties += 1
            continue
        if winner not in ("model_a", "model_b"):
            raise UserError(f"{rec.where}: winner should be model_a, model_b or a tie, got {winner!r}")
        flags = {f: bool(rec.data[f]) for f in FLAGS if isinstance(rec.data.get(f), bool)}
        items.append(Item(subtask=key, uid=str(rec.data.get("question_id", len(items))), prompt=conv, responses=[a, b],
                          pairs=[(0, 1)] if winner == "model_a" else [(1, 0)], where=rec.where,
                          group=str(rec.data.get("language", "")), meta={"flags": flags}))
    return items, ties


def _orient(rec: Record, pair, correct: list[bool]) -> tuple[int, int]:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(i, int) for i in pair):
        raise UserError(f"{rec.where}: a conflict pair should be [i, j], got {pair!r}")
    i, j = pair
    if not (0 <= i < len(correct) and 0 <= j < len(correct)):
        raise UserError(f"{rec.where}: conflict pair {pair} is out of range for {len(correct)} responses (0-based)")
    if correct[i] == correct[j]:
        raise UserError(f"{rec.where}: conflict pair {pair} joins two responses of equal correctness")
    return (i, j) if correct[i] else (j, i)


def _correctness_items(records: list[Record], key: str, which: str) -> list[Item]:
    items = []
    for rec in records:
        prompt = need(rec, "prompt", (str, list), "a string or a list of messages")
        conv = messages(rec, prompt, "prompt")
        scores = need(rec, "scores", list, "a list of booleans")
        if not scores or not all(isinstance(s, bool) for s in scores):
            raise UserError(f"{rec.where}: field 'scores' should be a non-empty list of booleans")
        responses = [need(rec, f"response_{i + 1}", str) for i in range(len(scores))]
        sampled = rec.data.get("sampled_conflict_pairs")
        if which == "sampled" and sampled is not None:
            pairs = [_orient(rec, p, scores) for p in sampled]
        else:
            pairs = [(i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] and not scores[j]]
        items.append(Item(subtask=key, uid=str(rec.data.get("question_id", len(items))), prompt=conv, responses=responses,
                          pairs=pairs, correct=list(scores), group=str(rec.data.get("model_name", "")), where=rec.where))
    return items


def load(bcfg: Mapping, name: str) -> list[Item]:
    which = bcfg.get("correctness_pairs", "sampled")
    if which not in ("sampled", "all"):
        raise UserError(f"benchmark.{name}.correctness_pairs must be 'sampled' or 'all', got {which!r}")
    items = []
    for key, spec in dict(bcfg["subsets"]).items():
        kind = spec.get("kind")
        records = set_records(bcfg, name, key, spec)
        if kind == "human":
            part, ties = _human_items(records, key)
            log.info("%s/%s: %d pairs, %d ties excluded", name, key, len(part), ties)
        elif kind == "correctness":
            part = _correctness_items(records, key, which)
        else:
            raise UserError(f"benchmark.{name}.subsets.{key}.kind must be 'human' or 'correctness', got {kind!r}")
        items.extend(part)
    return items


def _flags_on(item: Item) -> list[str]:
    return [f for f, on in item.meta.get("flags", {}).items() if on]


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    out: dict = {}
    for subtask, idx in group_indices(items, "subtask").items():
        part, part_r = [items[i] for i in idx], [np.asarray(rewards[i]) for i in idx]
        if part[0].correct is None:
            out[subtask] = {"accuracy": accuracy_of(part, part_r), "n": len(part), "by_flag": accuracy_by(part, part_r, _flags_on)}
            continue
        curve = best_of_k_curve(part, part_r)
        per_prompt_auc = [a for a in (roc_auc(r, it.correct) for it, r in zip(part, part_r)) if a is not None]
        out[subtask] = {
            "n_prompts": len(part), "accuracy": accuracy_of(part, part_r),
            "best_of_k": {key: curve[key] for key in ("k", "expected_correctness", "oracle")},
            "end_score": curve["end_score"], "max_achieved": curve["max_achieved"], "random_pick": curve["random_pick"],
            "roc_auc": roc_auc(np.concatenate(part_r), np.concatenate([it.correct for it in part])),
            "roc_auc_mean_per_prompt": float(np.mean(per_prompt_auc)) if per_prompt_auc else None,
        }
    sets = [v for v in out.values() if "best_of_k" in v]
    if sets:
        keys = ("accuracy", "end_score", "max_achieved", "roc_auc", "roc_auc_mean_per_prompt")
        present = {k: [s[k] for s in sets if s[k] is not None] for k in keys}
        out["correctness_mean"] = {k: float(np.mean(v)) if v else None for k, v in present.items()}
        out["correctness_mean"]["n_sets"] = len(sets)
    return out
