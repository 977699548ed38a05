"""RM-Bench (THU-KEG/RM-Bench, `total_dataset.json`): three chosen and three rejected responses per prompt, in the styles
[concise, detailed plain, detailed markdown]; domains chat, code, math, safety-refuse, safety-response.

All six responses of a prompt are scored together. Subtasks are the domains with safety-refuse and safety-response merged into
safety; accuracy and BT loss pool the 9 (chosen_i, rejected_j) pairs. The official aggregate is RM-Bench's 3x3 matrix
acc[i][j] = mean over prompts of [r(chosen_i) > r(rejected_j)]: hard = mean of the upper triangle (i < j: a plainer chosen against
a fancier rejected), normal = the diagonal, easy = the lower triangle; a domain's score is the mean of all 9 cells; overall and
easy / normal / hard are means over the four domains (the leaderboard's "Domain Avg = Difficulty Avg = Overall").
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import numpy as np

from worldpm.errors import UserError
from worldpm.eval.items import Item
from worldpm.eval.metrics import best_of_k_by
from worldpm.eval.benchmarks.sources import need, records_for, text_list

STYLES = ("concise", "detailed_plain", "detailed_markdown")
DOMAINS = ("chat", "code", "math", "safety")


# official keys the report shows (dotted, * wildcards)
HEADLINE = ("domains.*.easy", "domains.*.normal", "domains.*.hard", "easy", "normal", "hard", "overall", "best_of_k.*.end_score")

def domain_of(domain: str) -> str | None:
    if domain.startswith("safety"):
        return "safety"
    return domain if domain in DOMAINS else None


def load(bcfg: Mapping, name: str) -> list[Item]:
    items = []
    for rec in records_for(bcfg, name):
        prompt = need(rec, "prompt", str)
        chosen, rejected = text_list(rec, "chosen", 3), text_list(rec, "rejected", 3)
        raw_domain = need(rec, "domain", str)
        domain = domain_of(raw_domain)
        if domain is None:
            raise UserError(f"{rec.where}: unknown RM-Bench domain {raw_domain!r} (expected chat, code, math, safety-*)")
        items.append(Item(subtask=domain, uid=str(rec.data.get("id", len(items))), group=raw_domain, where=rec.where,
                          prompt=[{"role": "user", "content": prompt}], responses=chosen + rejected,
                          pairs=[(i, 3 + j) for i in range(3) for j in range(3)], styles=list(STYLES) * 2,
                          correct=[True] * 3 + [False] * 3))
    return items


def style_matrix(rewards: list[np.ndarray]) -> np.ndarray:
    """acc[i][j] = mean over prompts of [r(chosen_i) > r(rejected_j)] (a tie is wrong)."""
    r = np.asarray(rewards, dtype=np.float64)  # (prompts, 6)
    return (r[:, :3, None] > r[:, None, 3:]).mean(axis=0)


def difficulty(matrix: np.ndarray) -> dict[str, float]:
    upper, lower = np.triu_indices(3, 1), np.tril_indices(3, -1)
    return {"easy": float(matrix[lower].mean()), "normal": float(np.diag(matrix).mean()), "hard": float(matrix[upper].mean()),
            "average": float(matrix.mean())}


def official(items: list[Item], rewards: list[np.ndarray], bcfg: Mapping) -> dict:
    by_domain: dict[str, list[np.ndarray]] = defaultdict(list)
    for item, r in zip(items, rewards):
        by_domain[item.subtask].append(r)
    domains = {}
    for domain in DOMAINS:
        if by_domain.get(domain):
            m = style_matrix(by_domain[domain])
            domains[domain] = {"n": len(by_domain[domain]), **difficulty(m), "matrix": m.tolist()}
    out = {"domains": domains, "domains_missing": [d for d in DOMAINS if d not in domains], "styles": list(STYLES)}
    for key in ("easy", "normal", "hard", "average"):
        out[key] = float(np.mean([d[key] for d in domains.values()])) if domains else None
    out["overall"] = out.pop("average")
    out["best_of_k"] = best_of_k_by(items, rewards)  # PPE's curve over a prompt's six replies (the three chosen correct)
    return out
