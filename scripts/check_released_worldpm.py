"""Check worldpm's reader against the released WorldPM-72B: which readout reproduces the model card's reference scores?

The card scores its two example conversations [0.6298332214355469, -1.6425328254699707]. Sources disagree on where the released
code reads the reward (at `<|endoftext|>`, or the token before it), so this scores them three ways with the real weights:
  reward_token         worldpm's ChatML + appended <|endoftext|>, read at <|endoftext|>
  before_reward_token  the same string, read at the token before it (what worldpm uses for a released directory)
  readme_path          the card's own recipe: the directory's tokenizer chat template, encode, read the last token
and reports which one matches. Needs the weights (~146 GB in bf16: two 80 GB GPUs or more with --device-map auto).

  python scripts/check_released_worldpm.py --model-path /data/WorldPM-72B [--device-map auto] [--dtype bfloat16]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REFERENCE = [0.6298332214355469, -1.6425328254699707]
EXAMPLES = Path(__file__).resolve().parents[1] / "worldpm" / "assets" / "examples" / "worldpm_readme.jsonl"


def main(argv=None) -> int:
    import torch
    from transformers import AutoTokenizer

    from worldpm.model.reward_model import RewardModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True, help="local directory (or hub id) of Qwen/WorldPM-72B")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device-map", default=None, help="e.g. auto (multi-GPU); default: --device")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tolerance", type=float, default=0.05, help="max |score - reference| to call a match (bf16 noise)")
    args = ap.parse_args(argv)

    conversations = [json.loads(line)["conversation"] for line in EXAMPLES.read_text().splitlines() if line.strip()]
    rm = RewardModel.from_pretrained(args.model_path, dtype=args.dtype, device_map=args.device_map,
                                     device=None if args.device_map else args.device)
    print(f"loaded {args.model_path}: head={rm.spec.head}, readout chosen for it={rm.spec.readout}")
    results = {}
    for readout in ("reward_token", "before_reward_token"):
        rm.spec.readout = readout
        results[readout] = rm.score(conversations)
    # The card's recipe: its own template, add_special_tokens=False, the reward at the last token.
    own = AutoTokenizer.from_pretrained(args.model_path)
    ids = [own.encode(own.apply_chat_template(c, tokenize=False, add_generation_prompt=False), add_special_tokens=False)
           for c in conversations]
    rm.spec.readout = "reward_token"  # i.e. read at the last token of each sequence
    results["readme_path"] = rm.score_ids(ids)

    matches = []
    for name, scores in results.items():
        err = max(abs(a - b) for a, b in zip(scores, REFERENCE))
        ok = err <= args.tolerance
        matches += [name] if ok else []
        print(f"{name:20s} {[round(s, 4) for s in scores]}  max|diff| vs card {err:.4f}  {'MATCH' if ok else ''}")
    print(f"card reference       {[round(s, 4) for s in REFERENCE]}")
    print("matching readouts: " + (", ".join(matches) if matches else "none (check dtype, weights and tokenizer)"))
    return 0 if matches else 1


if __name__ == "__main__":
    raise SystemExit(main())
