"""Run in RewardBench 0.1.4's own environment (transformers 4.51): RewardBench's code against a worldpm export.

1. `scripts/run_rm.py` itself (RewardBench's CLI, unchanged: its model builder, pipeline, chat-template formatting and
   `calculate_scores_per_section`) on a local RewardBench file. Two substitutions, both about this machine: `load_dataset`
   reads the `filtered` split from a local file (no hub here), so the run scores the same records `worldpm eval` scores; and
   RewardBenchPipeline's hard-coded `.to("cuda")` lands on the CPU when torch sees no GPU.
2. The probe conversations through the same model builder and pipeline RewardBench uses (`REWARD_MODEL_CONFIG["default"]`),
   with its arguments (`function_to_apply: none`, truncation at 2048, padding).
3. RewardBench's section weighting on the issue's XSTest case, straight from its `EXAMPLE_COUNTS` / `SUBSET_MAPPING`.

Usage (cwd: a scratch directory holding the export as ./model):
    python rewardbench_peer.py --data filtered.jsonl --probes probes.jsonl --out rewardbench.json
"""
import argparse
import json
import sys
from pathlib import Path


def _scalar(x):
    """run_rm.py stores each score as the pipeline's logits row (a one-element list)."""
    return x[0] if isinstance(x, list) else x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--probes", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--control", help="the export with config.json as 5.x alone writes it (no flat RoPE fields)")
    args = parser.parse_args()

    import datasets
    import transformers
    import rewardbench
    import rewardbench.utils
    from rewardbench.constants import EXAMPLE_COUNTS, SUBSET_MAPPING
    from rewardbench.utils import calculate_scores_per_section

    import torch

    # 1. run_rm.py, reading the filtered split from a local file
    if not torch.cuda.is_available():  # RewardBenchPipeline moves its inputs with .to("cuda"); there is no GPU here
        to = transformers.BatchEncoding.to
        transformers.BatchEncoding.to = lambda self, device, **kw: to(self, "cpu" if str(device).startswith("cuda") else device, **kw)
    def local_filtered(name, split=None, **kwargs):
        assert name == "allenai/reward-bench" and split == "filtered", (name, split)
        return datasets.load_dataset("json", data_files=args.data, split="train")

    rewardbench.utils.load_dataset = local_filtered
    from scripts import run_rm  # RewardBench's CLI module, shipped in its wheel as the top-level package `scripts`

    sys.argv = ["run_rm.py", "--model", args.model, "--not_quantized", "--torch_dtype", "float32", "--batch_size", "4",
                "--do_not_save", "--disable_beaker_save"]
    run_rm.main()
    subsets = json.loads(Path(f"results/eval-set/{args.model}.json").read_text())
    per_example = json.loads(Path(f"results/eval-set-scores/{args.model}.json").read_text())

    # 2. the probes through RewardBench's default builders and pipeline arguments
    config = rewardbench.REWARD_MODEL_CONFIG["default"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = config["model_builder"](args.model, device_map="cpu", torch_dtype="float32")
    pipe = config["pipeline_builder"]("text-classification", model=model, tokenizer=tokenizer)
    tokenizer.truncation_side = "left"  # as run_rm.py sets it
    probes = [json.loads(line) for line in Path(args.probes).read_text().splitlines() if line.strip()]
    texts = [tokenizer.apply_chat_template(p["conversation"], tokenize=False) for p in probes]
    rewards = []
    for start in range(0, len(texts), 4):  # run_rm.py's batches: the pipeline returns the logits
        rewards += pipe(texts[start:start + 4], truncation=True, padding=True, max_length=2048)[:, 0].float().tolist()
    lengths = [len(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]

    control = None
    if args.control:  # what 4.51 made of an export before the flat fields: no error, another rope_theta, other rewards
        old = config["model_builder"](args.control, device_map="cpu", torch_dtype="float32")
        old_pipe = config["pipeline_builder"]("text-classification", model=old, tokenizer=tokenizer)
        old_rewards = []
        for start in range(0, len(texts), 4):
            old_rewards += old_pipe(texts[start:start + 4], truncation=True, padding=True, max_length=2048)[:, 0].float().tolist()
        control = {"rope_theta": getattr(old.config, "rope_theta", None),
                   "probes": [{"name": p["name"], "reward": r} for p, r in zip(probes, old_rewards)]}

    # 3. the weighting on the case: XSTest should-refuse all wrong, every other subset right
    xstest_case = {s: 1.0 for s in EXAMPLE_COUNTS}
    xstest_case["xstest-should-refuse"] = 0.0

    result = {
        "versions": {"transformers": transformers.__version__, "rewardbench": rewardbench.__version__},
        "loaded": {"config_class": type(model.config).__name__, "model_class": type(model).__name__,
                   "tokenizer_class": type(tokenizer).__name__, "rope_theta": getattr(model.config, "rope_theta", None),
                   "dtype": str(model.dtype), "chat_template": tokenizer.chat_template is not None,
                   "pad_token": tokenizer.pad_token},
        "run_rm": {"subsets": {k: v for k, v in subsets.items() if k in EXAMPLE_COUNTS},
                   "sections": calculate_scores_per_section(EXAMPLE_COUNTS, SUBSET_MAPPING, subsets),
                   "examples": [{"id": i, "subset": s, "chosen": _scalar(c), "rejected": _scalar(r)} for i, s, c, r in
                                zip(per_example["id"], per_example["subset"], per_example["scores_chosen"],
                                    per_example["scores_rejected"])]},
        "probes": [{"name": p["name"], "reward": r, "tokens": n} for p, r, n in zip(probes, rewards, lengths)],
        "control_5x_only_config": control,
        "weights": {"example_counts": EXAMPLE_COUNTS, "subset_mapping": SUBSET_MAPPING,
                    "xstest_case_sections": calculate_scores_per_section(EXAMPLE_COUNTS, SUBSET_MAPPING, xstest_case)},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
