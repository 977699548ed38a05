#!/usr/bin/env python
"""The paper's fine-tuning experiment at a scale a CPU runs, with a known answer: does starting from a preference model beat
starting from scratch, and does the gap narrow as the fine-tuning set grows?

Two synthetic worlds share structure (data_prep/synthetic.py): the "forum" world, and a "finetune" world whose true reward is
the forum's plus six words of its own. A preference model (PM) is trained on the forum world; then, for each fine-tuning size n
(nested subsets of the finetune world's train split), two runs train on the first n pairs with the same steps and learning
rate: one from the PM (`init_from`), one from scratch (a fresh model of the same architecture). Both are evaluated on the
finetune world's whole test split (`worldpm eval benchmark=[heldout]`), compared with `worldpm compare` (paired bootstrap CI
of the loss difference over test prompts), and set against the finetune world's Bayes loss, the floor no model can beat.

    python scripts/finetune_gap.py --out runs/finetune_gap                       # the table in docs/finetune.md
    python scripts/finetune_gap.py --out /tmp/gap --sizes 32 1024 --forum-pairs 4096 --test-pairs 600   # what CI runs

Writes out/gap.json (the figures), out/gap.md (the table) and out/gap.png (test loss against n, both curves and the Bayes
floor); every stage's own outputs (data, runs, evals, comparisons) stay under out/.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_verb(config: str, target: str, overrides: list[str]):
    """A verb in this process (the same `run(cfg)` the CLI calls), so the imports are paid once."""
    import importlib

    from worldpm.config import compose

    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)(compose(config, overrides))


def heldout_loss(eval_dir: Path) -> float:
    results = json.loads((eval_dir / "results.json").read_text())
    (sub,) = results["benchmarks"]["heldout"]["subtasks"].values()
    return float(sub["bt_loss"])


def steps_for(n: int, args) -> int:
    return max(args.min_steps, math.ceil(args.epochs * n / args.pairs_per_step))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096], help="fine-tuning set sizes (pairs)")
    p.add_argument("--forum-pairs", type=int, default=8192, help="pairs the preference model is trained on")
    p.add_argument("--forum-epochs", type=float, default=2.0, help="epochs of the preference model over them")
    p.add_argument("--scale", type=float, default=1.5, help="reward scale of both worlds (larger: labels closer to deterministic)")
    p.add_argument("--test-pairs", type=int, default=2000, help="about this many finetune-world test pairs")
    p.add_argument("--model", default="tiny", help="configs/model name of both the PM and the from-scratch runs")
    p.add_argument("--pairs-per-step", type=int, default=16)
    p.add_argument("--epochs", type=float, default=4.0, help="fine-tuning epochs over each set")
    p.add_argument("--min-steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (both starts)")
    p.add_argument("--forum-lr", type=float, default=2e-3, help="the preference model's learning rate")
    p.add_argument("--shared-weight", type=float, default=1.0, help="the forum reward's weight inside the finetune world's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=2000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)  # one intra-op thread: the runs are small, and the machine is shared
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from data_prep.synthetic import write_synthetic_dataset

    # 1. the two worlds; the finetune world's train split is cut into nested subsets that share its whole test split
    forum = write_synthetic_dataset(out / "data" / "forum", n_pairs=args.forum_pairs, test_fraction=0.05, seed=args.seed,
                                    scale=args.scale, overwrite=True)
    biggest = max(args.sizes)
    fraction = args.test_pairs / (biggest + args.test_pairs)
    n_total = int(math.ceil((biggest + args.test_pairs) * 1.05))
    ft = write_synthetic_dataset(out / "data" / "finetune", n_pairs=n_total, test_fraction=fraction, seed=args.seed + 1,
                                 world="finetune", shared_weight=args.shared_weight, nested_sizes=sorted(args.sizes), scale=args.scale,
                                 overwrite=True)
    if ft["splits"]["train"]["pairs"] < biggest:
        raise SystemExit(f"the finetune world has {ft['splits']['train']['pairs']} train pairs, fewer than {biggest}: raise --test-pairs")
    bayes = ft["bayes_bt_loss"]
    common = [f"model={args.model}", "deepspeed=null", "wandb.mode=disabled", "trainer.progress=false", "trainer.resume=never",
              f"trainer.pairs_per_step={args.pairs_per_step}", f"trainer.seed={args.seed}",
              "trainer.eval_every=0", "trainer.save_every=0", "trainer.log_every=1000000", f"data.cache_dir={out / 'cache'}"]

    # 2. the preference model, on the forum world
    pm = out / "runs" / "forum-pm"
    run_verb("train", "worldpm.train.recipe:run", [*common, f"data.path={out / 'data' / 'forum'}", f"output_dir={pm}",
                                                   f"trainer.epochs={args.forum_epochs}", f"trainer.lr={args.forum_lr}"])
    run_verb("eval", "worldpm.eval.run:run", [f"model_path={pm / 'final'}", "benchmark=[heldout]",
                                              f"benchmark.heldout.path={out / 'data' / 'finetune'}", f"output_dir={out / 'eval' / 'pm'}",
                                              "style.enabled=false", "report.plots=false", "bootstrap.samples=200"])
    pm_zero_shot = heldout_loss(out / "eval" / "pm")

    # 3. per size: from the PM and from scratch, the same steps and learning rate; both evaluated, then compared
    rows = []
    for n in sorted(args.sizes):
        data = out / "data" / "finetune-nested" / f"n-{n}"
        steps = steps_for(n, args)
        losses = {}
        for init in ("from_scratch", "from_pm"):
            run_dir = out / "runs" / f"n-{n}" / init
            extra = [f"init_from={pm}"] if init == "from_pm" else []
            run_verb("train", "worldpm.train.recipe:run", [*common, *extra, f"data.path={data}", f"output_dir={run_dir}",
                                                           f"trainer.max_steps={steps}", f"trainer.lr={args.lr}"])
            eval_dir = out / "eval" / f"n-{n}" / init
            run_verb("eval", "worldpm.eval.run:run", [f"model_path={run_dir / 'final'}", "benchmark=[heldout]",
                                                      f"benchmark.heldout.path={out / 'data' / 'finetune'}", f"output_dir={eval_dir}",
                                                      "style.enabled=false", "report.plots=false", "bootstrap.samples=200"])
            losses[init] = heldout_loss(eval_dir)
        cmp = run_verb("compare", "worldpm.eval.compare:run", [f"a={out / 'eval' / f'n-{n}' / 'from_pm'}",
                                                               f"b={out / 'eval' / f'n-{n}' / 'from_scratch'}",
                                                               "a_name=from_pm", "b_name=from_scratch",
                                                               f"output_dir={out / 'compare' / f'n-{n}'}",
                                                               f"bootstrap.samples={args.bootstrap}", "plots=false"])
        (gap,) = cmp["subtasks"].values()
        rows.append({"n": n, "steps": steps, "from_scratch": losses["from_scratch"], "from_pm": losses["from_pm"],
                     "gap": gap["bt_loss"]["difference"], "gap_ci": gap["bt_loss"]["difference_ci"],
                     "excess_from_scratch": losses["from_scratch"] - bayes, "excess_from_pm": losses["from_pm"] - bayes})
        print(f"n={n:>6} steps={steps:>5}  from scratch {losses['from_scratch']:.4f}  from PM {losses['from_pm']:.4f}  "
              f"gap {rows[-1]['gap']:+.4f} {[round(x, 4) for x in rows[-1]['gap_ci']]}  (Bayes {bayes:.4f})", flush=True)

    result = {"bayes_bt_loss": bayes, "bayes_bt_loss_expected": ft["bayes_bt_loss_expected"],
              "forum_bayes_bt_loss": forum["bayes_bt_loss"], "pm_zero_shot": pm_zero_shot,
              "test_pairs": ft["splits"]["test"]["pairs"], "rows": rows, "settings": vars(args),
              "seconds": round(time.perf_counter() - started, 1)}
    write_outputs(out, result)
    return result


def write_outputs(out: Path, result: dict) -> None:
    from worldpm.atomic_dir import write_json, write_text
    from worldpm.eval.report import pyplot

    s = result["settings"]
    lines = [f"Fine-tuning on the finetune world ({result['test_pairs']} test pairs): held-out BT loss, {s['model']}, "
             f"{s['epochs']:g} epochs (at least {s['min_steps']} steps) of {s['pairs_per_step']} pairs, lr {s['lr']:g} for both; "
             f"the PM saw {s['forum_pairs']} forum-world pairs {s['forum_epochs']:g} times at lr {s['forum_lr']:g}; reward scale {s['scale']:g}; gap = from scratch - from PM with its 95% paired bootstrap CI "
             f"over test prompts.", "",
             "| fine-tuning pairs | steps | from scratch | from PM | gap | excess over Bayes: scratch / PM |",
             "|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['n']:,} | {r['steps']} | {r['from_scratch']:.4f} | {r['from_pm']:.4f} | {r['gap']:+.4f} "
                     f"[{r['gap_ci'][0]:+.4f}, {r['gap_ci'][1]:+.4f}] | {r['excess_from_scratch']:.4f} / {r['excess_from_pm']:.4f} |")
    lines += ["", f"Bayes loss of the finetune world's test split (the floor): {result['bayes_bt_loss']:.4f}; the PM before any "
              f"fine-tuning: {result['pm_zero_shot']:.4f}; chance: {math.log(2):.4f}.", ""]
    write_text(out / "gap.md", "\n".join(lines))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ns = [r["n"] for r in result["rows"]]
    ax.plot(ns, [r["from_scratch"] for r in result["rows"]], marker="o", label="from scratch")
    ax.plot(ns, [r["from_pm"] for r in result["rows"]], marker="o", label="from the preference model")
    ax.axhline(result["bayes_bt_loss"], color="grey", linestyle="--", label="Bayes loss (floor)")
    ax.set_xscale("log")
    ax.set_xlabel("fine-tuning pairs")
    ax.set_ylabel("held-out BT loss, finetune world")
    ax.legend()
    ax.set_title("Starting from a preference model vs from scratch")
    fig.tight_layout()
    fig.savefig(out / "gap.png", dpi=120)
    plt.close(fig)
    write_json(out / "gap.json", result)  # last: its presence marks a complete experiment


if __name__ == "__main__":
    main()
