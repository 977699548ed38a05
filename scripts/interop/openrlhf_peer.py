"""Run in OpenRLHF 0.11.2's own environment (its transformers pin, 5.15, with worldpm installed beside it): OpenRLHF's rollout
reward path against a worldpm export and a running `worldpm serve`.

For each probe conversation, OpenRLHF's `SingleTurnAgentExecutor.execute` (unchanged) runs as in a PPO rollout: its tokenizer
(`openrlhf.utils.get_tokenizer`, left padding) renders the prompt with the chat template, a scripted engine stands in for vLLM and
"generates" the probe's reply ending in `<|im_end|>`, the executor decodes prompt + reply and fetches the reward:
- over HTTP (`--reward.remote_url http://.../get_reward`: its aiohttp client, one sample per request);
- in-process (`--reward.remote_url <worldpm/serve/reward_funcs.py>`: its file hook, the model loaded in this process).
Also the export through plain `AutoModelForSequenceClassification` of this transformers.

Usage: python openrlhf_peer.py --model DIR --url http://127.0.0.1:PORT/get_reward --probes probes.jsonl --out openrlhf.json
"""
import argparse
import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace


class ScriptedEngine:
    """Stands in for OpenRLHF's vLLM engine: `generate` answers with the given reply's token ids, finished normally."""

    def __init__(self, reply_ids):
        self.reply_ids = reply_ids

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = SimpleNamespace(token_ids=list(self.reply_ids), finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def rollout_rewards(executor, tokenizer, conversations) -> tuple[list[float], list[str]]:
    rewards, queries = [], []
    for conv in conversations:
        prompt = tokenizer.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=False)
        reply_ids = tokenizer(conv[-1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        params = SimpleNamespace(max_tokens=len(reply_ids) + 8, logprobs=None)
        out = asyncio.run(executor.execute(prompt, "", params, 8192, tokenizer, ScriptedEngine(reply_ids)))
        if out["reward"] is None:
            raise RuntimeError(f"OpenRLHF got no reward for {prompt[:60]!r}")
        reward = out["reward"]
        rewards.append(float(reward[0] if isinstance(reward, list) else reward))
        queries.append(tokenizer.decode(out["observation_tokens"], skip_special_tokens=False))
    return rewards, queries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--probes", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import transformers
    from openrlhf.utils import get_tokenizer
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    import worldpm
    import worldpm.serve.reward_funcs as hook

    probes = [json.loads(line) for line in Path(args.probes).read_text().splitlines() if line.strip()]
    probes = [p for p in probes if not p.get("long")]  # OpenRLHF truncates by its own max_len: docs/models.md, max_length
    conversations = [p["conversation"] for p in probes]
    tokenizer = get_tokenizer(args.model, None, "left", None, use_fast=True)

    http_rewards, queries = rollout_rewards(SingleTurnAgentExecutor(remote_rm_url=args.url), tokenizer, conversations)
    os.environ.update(WORLDPM_MODEL_PATH=args.model, WORLDPM_DEVICE="cpu")
    file_rewards, _ = rollout_rewards(SingleTurnAgentExecutor(remote_rm_url=hook.__file__), tokenizer, conversations)

    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32).eval()
    plain = transformers.AutoTokenizer.from_pretrained(args.model)
    texts = [plain.apply_chat_template(c, tokenize=False) for c in conversations]
    with torch.no_grad():
        batch = plain(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        hf_rewards = model(**batch).logits[:, 0].tolist()

    import openrlhf

    result = {"versions": {"transformers": transformers.__version__, "openrlhf": getattr(openrlhf, "__version__", "0.11.2"),
                           "worldpm": worldpm.__version__},
              "loaded": {"tokenizer_class": type(tokenizer).__name__, "padding_side": tokenizer.padding_side,
                         "model_class": type(model).__name__, "rope_theta": model.config.rope_parameters.get("rope_theta")},
              "probes": [{"name": p["name"], "http": h, "file_hook": f, "transformers": t, "query_tail": q[-40:]}
                         for p, h, f, t, q in zip(probes, http_rewards, file_rewards, hf_rewards, queries)]}
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
