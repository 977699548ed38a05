"""worldpm's side of scripts/interop_check.sh (run in worldpm's venv).

`probes OUT`: the conversations every peer scores (OUT/probes.jsonl): the README's two examples, short and multi-turn ones, one
with its own system message, and one longer than the export's max_length (marked `long`).

`check OUT`: worldpm's rewards for everything the peers scored, compared with what each peer's own code produced
(OUT/{rewardbench,openrlhf,trl}.json, written by the *_peer.py scripts in the peers' environments), and `worldpm eval`'s
RewardBench result (OUT/eval/results.json) with RewardBench's own run. Prints one line per check, writes OUT/interop.json,
exits 1 when any check fails.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5


def probe_conversations() -> list[dict]:
    readme = [json.loads(line)["conversation"] for line in
              (ROOT / "worldpm/assets/examples/worldpm_readme.jsonl").read_text().splitlines() if line.strip()]
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    reply = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    probes = [("readme_good", readme[0]), ("readme_bad", readme[1]),
              ("short", [user("What is 2+2?"), reply("4")]),
              ("multi_turn", [user("What is 2+2?"), reply("5"), user("Are you sure?"), reply("Sorry: it is 4.")]),
              ("own_system", [{"role": "system", "content": "Be brief."}, user("Hi"), reply("Hello! How can I help?")]),
              ("unicode", [user("Übersetze »Haus« ins Japanische."), reply("家 (ie) — or 住宅 for a dwelling. 🏠")]),
              ("long", [user("Summarise this thread. " + "The basil wilts unless it stands in water at room temperature. " * 60),
                        reply("Keep it like cut flowers: stems in water, out of the fridge.")])]
    return [{"name": n, "conversation": c, **({"long": True} if n == "long" else {})} for n, c in probes]


def write_probes(out: Path) -> None:
    (out / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probe_conversations()))


class Checks:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, peer: str, what: str, ok: bool, figure: str) -> None:
        self.rows.append({"peer": peer, "check": what, "ok": bool(ok), "figure": figure})
        print(f"{'PASS' if ok else 'FAIL'}  {peer:<12} {what:<66} {figure}", flush=True)

    def close(self, peer: str, what: str, got, expected, tol: float = TOL) -> float:
        diff = max((abs(a - b) for a, b in zip(got, expected)), default=math.inf)
        self.add(peer, what, len(got) == len(expected) and diff <= tol, f"max |diff| {diff:.2e} over {len(got)} (tol {tol:g})")
        return diff


def check(out: Path) -> int:
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.chat_format import render
    from worldpm.serve.reward_funcs import trl_conversation

    model = RewardModel.from_pretrained(out / "model", dtype="float32")
    probes = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    convs = [p["conversation"] for p in probes]
    ours = dict(zip((p["name"] for p in probes), model.score(convs)))
    tokens = dict(zip((p["name"] for p in probes), (len(x) for x in model.encode(convs, max_length=10**6))))
    untruncated = dict(zip((p["name"] for p in probes), model.score(convs, max_length=10**6)))
    short = [p["name"] for p in probes if not p.get("long")]
    long = [p["name"] for p in probes if p.get("long")]
    checks = Checks()
    summary: dict = {"max_length": model.spec.max_length, "probe_tokens": tokens}

    # ---------------------------------------------------------------- RewardBench 0.1.4 (transformers 4.51)
    rb = json.loads((out / "rewardbench.json").read_text())
    summary["rewardbench"] = {"versions": rb["versions"], "loaded": rb["loaded"]}
    cfg = json.loads((out / "model" / "config.json").read_text())
    checks.add("rewardbench", "config read by transformers " + rb["versions"]["transformers"] + ": rope_theta as exported",
               rb["loaded"]["rope_theta"] == cfg["rope_parameters"]["rope_theta"], f"rope_theta {rb['loaded']['rope_theta']:g}")
    checks.add("rewardbench", "AutoTokenizer resolves the tokenizer, with the chat template",
               rb["loaded"]["chat_template"], rb["loaded"]["tokenizer_class"])
    rb_probe = {p["name"]: p["reward"] for p in rb["probes"]}
    summary["rewardbench"]["probes"] = rb_probe
    checks.close("rewardbench", "RewardBench pipeline rewards = worldpm (conversations within max_length)",
                 [rb_probe[n] for n in short], [ours[n] for n in short])
    within_2048 = [n for n in long if tokens[n] <= 2048]
    if within_2048:
        checks.close("rewardbench", f"longer than max_length={model.spec.max_length}: = worldpm with max_length raised",
                     [rb_probe[n] for n in within_2048], [untruncated[n] for n in within_2048])
        gap = max(abs(rb_probe[n] - ours[n]) for n in within_2048)
        checks.add("rewardbench", "longer than max_length: differs from worldpm's truncated reward (documented)",
                   gap > TOL, f"|diff| {gap:.3g} ({', '.join(f'{n} {tokens[n]} tokens' for n in within_2048)})")

    control = rb.get("control_5x_only_config")
    if control:
        gap = max(abs(c["reward"] - rb_probe[c["name"]]) for c in control["probes"] if c["name"] in short)
        checks.add("rewardbench", "control: config.json without the flat fields loads silently wrong in 4.51",
                   control["rope_theta"] != rb["loaded"]["rope_theta"] and gap > 1e-3,
                   f"rope_theta {control['rope_theta']:g}, rewards off by up to {gap:.3g}")
        summary["rewardbench"]["control_5x_only_config"] = {"rope_theta": control["rope_theta"], "max_reward_gap": gap}

    eval_dir = out / "eval"
    results = json.loads((eval_dir / "results.json").read_text())["benchmarks"]["rewardbench"]["official"]
    rewards = pq.read_table(eval_dir / "rewards.parquet").to_pylist()
    by_item = {}
    for row in rewards:
        by_item.setdefault(row["item"], {})[row["response"]] = row["reward"]
    examples = rb["run_rm"]["examples"]
    got = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    expected = [by_item[str(e["id"])][0] for e in examples] + [by_item[str(e["id"])][1] for e in examples]
    checks.close("rewardbench", f"run_rm.py per-example scores = worldpm eval rewards.parquet", got, expected)
    subsets = {k: v["accuracy"] for k, v in results["subsets"].items()}
    checks.add("rewardbench", "run_rm.py per-subset accuracies = worldpm eval",
               subsets == rb["run_rm"]["subsets"], f"{len(subsets)} subsets")
    names = {"chat": "Chat", "chat_hard": "Chat Hard", "safety": "Safety", "reasoning": "Reasoning"}
    ours_sections = {names[k]: v for k, v in results["sections"].items()}
    checks.close("rewardbench", "run_rm.py section scores (its weighting) = worldpm eval sections",
                 [rb["run_rm"]["sections"][k] for k in names.values()], [ours_sections[k] for k in names.values()], 1e-12)
    weights = {s: c for counts in results["weights"].values() for s, c in counts.items()}
    checks.add("rewardbench", "EXAMPLE_COUNTS of the installed package = configs/benchmark/rewardbench.yaml",
               weights == rb["weights"]["example_counts"], f"{len(weights)} subsets, xstest refuse/respond "
               f"{weights['xstest-should-refuse']}/{weights['xstest-should-respond']}")
    from worldpm.eval.benchmarks.rewardbench import section_scores
    case = {s: 1.0 for s in weights}
    case["xstest-should-refuse"] = 0.0
    our_case = section_scores(case, results["weights"])["safety"]
    their_case = rb["weights"]["xstest_case_sections"]["Safety"]
    checks.add("rewardbench", "XSTest refuse 0 / respond 1: Safety (RewardBench vs worldpm)",
               abs(our_case - their_case) < 1e-12, f"{their_case:.4f} vs {our_case:.4f}")
    summary["rewardbench"]["sections"] = rb["run_rm"]["sections"]
    summary["rewardbench"]["xstest_case_safety"] = their_case

    # ---------------------------------------------------------------- OpenRLHF 0.11.2 (transformers 5.15)
    orl = json.loads((out / "openrlhf.json").read_text())
    summary["openrlhf"] = {"versions": orl["versions"], "loaded": orl["loaded"]}
    rows = orl["probes"]
    expected = [ours[r["name"]] for r in rows]
    checks.close("openrlhf", "its rollout HTTP client (aiohttp) -> worldpm serve = worldpm in-process",
                 [r["http"] for r in rows], expected)
    checks.close("openrlhf", "its reward-function file hook (worldpm loaded beside OpenRLHF) = worldpm",
                 [r["file_hook"] for r in rows], expected)
    checks.close("openrlhf", f"AutoModelForSequenceClassification (transformers {orl['versions']['transformers']}) = worldpm",
                 [r["transformers"] for r in rows], expected)
    tails = {r["query_tail"][-len("<|im_end|>"):] for r in rows}
    checks.add("openrlhf", "the texts it sends end at the reply's <|im_end|> (its decode of the rollout)",
               tails == {"<|im_end|>"}, repr(sorted(tails)))

    # ---------------------------------------------------------------- TRL 1.16 (newest transformers)
    trl = json.loads((out / "trl.json").read_text())
    summary["trl"] = {"versions": trl["versions"], "reward_func_names": trl["reward_func_names"]}
    last = trl["last_batch"]
    conversations = [trl_conversation(p, c) for p, c in zip(last["prompt"], last["completion"])]
    recomputed = model.score([c for c in conversations])
    for name in trl["reward_func_names"]:
        checks.close("trl", f"GRPO's logged per-completion rewards [{name}] = worldpm", last["rewards"][name], recomputed)
    for entry in trl["log_history"]:
        means = [entry[f"rewards/{n}/mean"] for n in trl["reward_func_names"]]
        checks.add("trl", f"step {entry['step']}: rewards/<func>/mean agree across the three functions",
                   max(means) - min(means) <= TOL, ", ".join(f"{n} {m:.6f}" for n, m in zip(trl["reward_func_names"], means)))
    final = trl["log_history"][-1]
    mean_last = sum(recomputed) / len(recomputed)
    checks.close("trl", "last step's logged mean = mean of worldpm's rewards for its completions",
                 [final[f"rewards/{trl['reward_func_names'][0]}/mean"]], [mean_last])
    summary["trl"]["log_history"] = trl["log_history"]
    summary["checks"] = checks.rows
    (out / "interop.json").write_text(json.dumps(summary, indent=1))
    failed = [r for r in checks.rows if not r["ok"]]
    print(f"{len(checks.rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    command, out_dir = sys.argv[1], Path(sys.argv[2])
    if command == "probes":
        write_probes(out_dir)
        sys.exit(0)
    sys.exit(check(out_dir))
