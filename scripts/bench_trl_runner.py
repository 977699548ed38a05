#!/usr/bin/env python
"""TRL's RewardTrainer on pre-tokenised pairs: the baseline half of scripts/bench_train.py.

Runs in TRL's own virtualenv (it imports no worldpm). Input: a parquet file with `chosen_ids` / `rejected_ids` (the very token ids
worldpm trains on, so both frameworks see identical sequences) and a JSON model config. Output: a JSON line with real (non-pad)
tokens/s, the padding fraction, and the tokens computed (pads included) per pair and pairs/s, measured per optimizer step
after the first.
"""
import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", required=True, help="parquet with chosen_ids, rejected_ids")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--arch", required=True, help="JSON: Qwen2Config fields")
    p.add_argument("--pairs-per-step", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import datasets
    import transformers
    import trl
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    arch = json.loads(args.arch)
    torch.manual_seed(args.seed)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch, num_labels=1, pad_token_id=tok.pad_token_id)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    train = datasets.load_dataset("parquet", data_files=args.pairs, split="train").select_columns(["chosen_ids", "rejected_ids"])

    counts = {"real": [], "total": []}

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    cfg = RewardConfig(output_dir=args.out + ".trl", max_steps=args.steps, per_device_train_batch_size=args.pairs_per_step,
                       learning_rate=1e-4, logging_steps=10 ** 6, save_strategy="no", eval_strategy="no", report_to=[],
                       use_cpu=True, bf16=False, max_length=args.max_length, dataloader_num_workers=0, seed=args.seed,
                       disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=train, processing_class=tok, callbacks=[timer])
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        counts["real"].append(int(batch["attention_mask"].sum()))
        counts["total"].append(int(batch["attention_mask"].numel()))
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    steps = min(len(timer.times), len(counts["real"]))
    real, total, secs = sum(counts["real"][1:steps]), sum(counts["total"][1:steps]), sum(timer.times[1:steps])
    pairs = args.pairs_per_step * (steps - 1)
    result = {"framework": f"trl {trl.__version__} RewardTrainer (transformers {transformers.__version__})", "steps": steps,
              "tokens_per_s": real / secs, "padding_fraction": 1 - real / total, "step_time_s": secs / (steps - 1),
              "real_tokens_per_step": real / (steps - 1), "pairs": pairs, "processed_tokens": total, "seconds": secs,
              "processed_tokens_per_pair": total / pairs, "pairs_per_s": pairs / secs}
    with open(args.out, "w") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
