"""`worldpm score`: rewards for a file of conversations, with the same reader as training and evaluation."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from worldpm.config import hydra_entry
from worldpm.errors import UserError

log = logging.getLogger("worldpm.score")


def read_conversations(path: str) -> list[list[dict]]:
    """jsonl, one conversation per line: a list of {role, content}, or an object with `conversation` / `messages`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"input file {path!r} does not exist")
    conversations = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            conv = row.get("conversation", row.get("messages")) if isinstance(row, dict) else row
            if conv is None:
                raise UserError(f"{path}:{lineno}: expected a list of messages or an object with 'conversation'/'messages'")
            conversations.append(conv)
    return conversations


def run(cfg: DictConfig) -> list[float]:
    from worldpm.chat_format import check_conversation
    from worldpm.reward_model import build_reward_model

    conversations = read_conversations(cfg.input)
    for i, conv in enumerate(conversations):
        check_conversation(conv, where=f"{cfg.input}: conversation {i + 1}")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if cfg.dtype:
        model_cfg["dtype"] = cfg.dtype
    model = build_reward_model(model_cfg, path=cfg.model_path, device=cfg.device)
    source = cfg.model_path or model_cfg.get("path") or f"model={model_cfg['name']} (random init)"
    log.info("scoring %d conversations with %s (head=%s, readout=%s)", len(conversations), source, model.spec.head, model.spec.readout)
    start = time.perf_counter()
    rewards = model.score(conversations, max_tokens=int(cfg.max_tokens_per_batch))
    log.info("scored %d conversations in %.2f s", len(rewards), time.perf_counter() - start)
    if cfg.output:
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(json.dumps({"index": i, "reward": r}) + "\n" for i, r in enumerate(rewards)))
        tmp.replace(out)
        log.info("wrote %s", out)
    else:
        for i, r in enumerate(rewards):
            print(f"{i}\t{r:.6f}")
    return rewards


main = hydra_entry("score")(run)

if __name__ == "__main__":
    main()
