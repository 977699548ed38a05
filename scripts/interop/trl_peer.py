"""Run in TRL 1.16's own environment (the newest transformers, with worldpm installed beside it): GRPOTrainer with worldpm's
rewards, three ways at once, for a few steps of a tiny random policy on CPU:
- `reward_funcs="<export dir>"`: TRL's own loading (AutoModelForSequenceClassification, num_labels=1) and scoring of the export;
- `trl_reward_func(model_path=...)`: worldpm's reward function, the model in this process;
- `trl_reward_func(url=...)`: worldpm's reward function against the running `worldpm serve` (stdlib HTTP client).
What TRL logged is written out: per step `rewards/<name>/mean`, and the last generation batch's prompts, completions and
per-function rewards (the trainer's own completion log).

Usage: python trl_peer.py --model DIR --url http://127.0.0.1:PORT --out trl.json --work DIR
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from worldpm.serve.reward_funcs import trl_reward_func

    work = Path(args.work)
    # the policy: a tiny random Qwen2 LM speaking through the export's tokenizer and chat template
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                                          tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                                          eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")))
    policy.save_pretrained(work / "policy")
    tokenizer.save_pretrained(work / "policy")

    questions = ["How do I keep basil fresh?", "Why is the sky blue?", "Name a prime number.", "Tips for better sleep?"]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    config = GRPOConfig(output_dir=str(work / "grpo"), per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=12, max_steps=args.steps, logging_steps=1, report_to=[], use_cpu=True,
                        bf16=False, save_strategy="no", seed=0, log_completions=False, disable_tqdm=True)
    funcs = [args.model,
             trl_reward_func(model_path=args.model, device="cpu", name="worldpm_in_process"),
             trl_reward_func(url=args.url, name="worldpm_http")]
    trainer = GRPOTrainer(model=str(work / "policy"), reward_funcs=funcs, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()

    names = list(trainer.reward_func_names)
    logged = [{k: v for k, v in entry.items() if k.startswith("rewards/") or k in ("step", "reward")}
              for entry in trainer.state.log_history if any(k.startswith("rewards/") for k in entry)]
    last = {"prompt": list(trainer._logs["prompt"]), "completion": list(trainer._logs["completion"]),
            "rewards": {name: list(trainer._logs["rewards"][name]) for name in names}}
    result = {"versions": {"transformers": transformers.__version__, "trl": trl.__version__},
              "reward_func_names": names, "log_history": logged, "last_batch": last}
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
