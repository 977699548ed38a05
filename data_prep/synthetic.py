"""`source=synthetic`: preference pairs whose labels are Bradley-Terry draws from a known reward of the text.

The ground truth for scaling studies: because the true reward r* is known, the best achievable test BT loss (the Bayes loss)
is known exactly, so a trained model's excess loss and a fitted L_inf can be checked against it.

Reward. A reply is `reply_words` space-separated words: the first is a neutral filler word, each later one is a feature word
with probability `feature_rate` (uniform over FEATURE_WEIGHTS) and a filler word otherwise; a period ends it. Then

    r*(reply) = scale * sum_w FEATURE_WEIGHTS[w] * count(w, reply)

(count over the reply's whitespace-separated words, lower-cased, punctuation stripped). Every feature word follows a space,
and " word" is one token in both the tiny and the Qwen tokenizer (tested), so r* is a linear function of token counts: a
2-layer transformer can represent it (attention averages token features; replies all have the same number of words).

Labels. For replies a, b of one prompt: P(a preferred) = sigmoid(r*(a) - r*(b)); one uniform draw decides which is `chosen`.
chosen_score / rejected_score are that single vote (1.0 / 0.0); the true rewards are in `meta`.

Bayes loss (written to stats.json and manifest.json, per split):
- realised  (`bayes_bt_loss`): mean over pairs of -log sigmoid(r*(chosen) - r*(rejected)) on the drawn labels: the test BT
  loss of a model whose rewards equal r* (what `worldpm eval` would report for it on this test split);
- expected  (`bayes_bt_loss_expected`): mean over pairs of H(sigmoid(r*(a) - r*(b))), H the binary entropy in nats: the
  same loss averaged over label draws.

Two worlds that share structure (the paper's fine-tuning experiment at CI scale). `world=forum` (default) is the above.
`world=finetune` is a second world: its replies draw feature words from FEATURE_WEIGHTS and from OWN_WEIGHTS (six words
that are neutral filler in the forum world), and its true reward is

    r_B(reply) = scale * (shared_weight * sum_w FEATURE_WEIGHTS[w] * count(w) + sum_w OWN_WEIGHTS[w] * count(w))

so a model trained on the forum world already knows the shared part (for shared_weight > 0) and must learn only the world's
own part, while a model trained from scratch must learn both. Its prompts ("Review the change to the ...") and thread ids are
its own, and its Bayes loss is computed from r_B like the forum world's (scripts/finetune_gap.py runs the experiment).

Determinism and nesting: thread t (one prompt, `pairs_per_thread` pairs) is generated from its own seeded RNG and assigned
to test with probability `test_fraction` by another, so the output depends only on (seed, parameters), and a dataset of n
pairs is the first n pairs of any larger one with the same seed. `nested_sizes` also writes datasets of the first n train
pairs that share the full test split (data_prep.nested). Pure python + pyarrow: no torch, no worldpm.

    python -m data_prep.synthetic output_dir=data/synthetic n_pairs=20000 seed=0 nested_sizes=[1000,4000,16000]

(configs/synthetic.yaml: the parameters of configs/source/synthetic.yaml, which `worldpm collect source=synthetic` reads too.)
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from data_prep.entry import check, hydra_entry
from data_prep.errors import InputError
from data_prep.nested import JSON_FORMAT, NestedDataError, prepare_output_dir, write_nested_subsets
from data_prep.records import ShardWriter, pair_id, write_json_atomic

SOURCE = "synthetic"

# The hidden reward: weights per feature word (single tokens in the tiny and Qwen tokenizers; see tests).
FEATURE_WEIGHTS: dict[str, float] = {
    "valid": 1.0, "useful": 1.0, "complete": 1.0, "simple": 0.5, "example": 0.5, "details": 0.5,
    "invalid": -1.0, "error": -1.0, "fail": -1.0, "unavailable": -0.5, "ignored": -0.5, "cannot": -0.5,
}
# The finetune world's own reward (words that are neutral filler in the forum world; single tokens in both tokenizers).
OWN_WEIGHTS: dict[str, float] = {"check": 1.0, "result": 1.0, "version": 0.5, "before": -1.0, "until": -1.0, "while": -0.5}
WORLDS = ("forum", "finetune")
# Neutral words (reward 0).
FILLER = ("about after all also always another any back before between both case check code data each file first from "
          "function have how input into item just key line list make more most name need next number object only open other "
          "output over part path point read result same see set should size some source start state string system text than "
          "that then there these this time type under until use value version way when where which while with word work write "
          "year").split()
TOPICS = ("cache", "buffer", "database", "directory", "socket", "server", "thread", "module", "package", "stream", "parser",
          "logger", "iterator", "decorator", "subprocess", "dictionary")

DEFAULTS = {"n_pairs": 20000, "test_fraction": 0.1, "seed": 0, "scale": 1.0, "reply_words": 16, "feature_rate": 0.3,
            "pairs_per_thread": 2, "nested_sizes": [], "nested_dir": None, "max_rows_per_shard": 50_000, "world": "forum",
            "shared_weight": 1.0}


def world_weights(world: str = "forum", shared_weight: float = 1.0) -> dict[str, float]:
    """The feature words of a world and their weights in its true reward (before `scale`)."""
    if world == "forum":
        return dict(FEATURE_WEIGHTS)
    return {**{w: shared_weight * v for w, v in FEATURE_WEIGHTS.items()}, **OWN_WEIGHTS}


class SyntheticDataError(InputError):
    """Bad parameters for the synthetic source; shown to the user as one line."""


def words(text: str) -> list[str]:
    return [w.strip(".,;:!?").lower() for w in text.split()]


def feature_counts(text: str, weights: dict[str, float] = FEATURE_WEIGHTS) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in words(text):
        if w in weights:
            counts[w] = counts.get(w, 0) + 1
    return counts


def true_reward(text: str, scale: float = DEFAULTS["scale"], weights: dict[str, float] = FEATURE_WEIGHTS) -> float:
    """r*(reply) = scale * sum_w weight[w] * count(w, reply) (the forum world's weights unless told otherwise)."""
    return scale * sum(weights[w] * c for w, c in feature_counts(text, weights).items())


def softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def bt_loss(delta: float) -> float:
    """-log sigmoid(delta)."""
    return softplus(-delta)


def expected_bt_loss(delta: float) -> float:
    """E over y ~ Bernoulli(sigmoid(delta)) of the loss of the true reward = H(sigmoid(delta)) in nats."""
    p = sigmoid(delta)
    return p * softplus(-delta) + (1.0 - p) * softplus(delta)


_FINETUNE_FILLER = tuple(w for w in FILLER if w not in OWN_WEIGHTS)


def _reply(rng: random.Random, reply_words: int, feature_rate: float, world: str = "forum") -> str:
    features = list(FEATURE_WEIGHTS) if world == "forum" else [*FEATURE_WEIGHTS, *OWN_WEIGHTS]
    filler = FILLER if world == "forum" else _FINETUNE_FILLER
    out = [rng.choice(filler)]
    for _ in range(reply_words - 1):
        out.append(rng.choice(features) if rng.random() < feature_rate else rng.choice(filler))
    return " ".join(out) + "."


def _world_tag(world: str) -> str:
    return "" if world == "forum" else f"-{world}"


def sample_replies(seed: int, index: int, n: int, *, scale: float = DEFAULTS["scale"], reply_words: int = DEFAULTS["reply_words"],
                   feature_rate: float = DEFAULTS["feature_rate"]) -> tuple[list[dict], list[str], list[float]]:
    """Best-of-N material: prompt `index`'s n replies drawn from the generator the training pairs come from (the "policy"),
    with their gold rewards r*. A stream of its own (seeded by `seed` and `index`), apart from the training threads'."""
    rng = random.Random(f"worldpm-synthetic-bon:{seed}:{index}")
    prompt = [{"role": "user", "content": f"Write a short note about the {rng.choice(TOPICS)}."}]
    replies = [_reply(rng, reply_words, feature_rate) for _ in range(n)]
    return prompt, replies, [true_reward(r, scale) for r in replies]


def reply_params(dataset: str | os.PathLike | None) -> dict:
    """The reply parameters (scale, reply_words, feature_rate) of a synthetic dataset, from its manifest; None: the defaults."""
    keys = ("scale", "reply_words", "feature_rate")
    if dataset is None:
        return {k: DEFAULTS[k] for k in keys}
    path = Path(dataset) / "manifest.json"
    try:
        params = json.loads(path.read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SyntheticDataError(f"{dataset} is not a source=synthetic dataset (no manifest.json with its params)") from None
    return {k: params[k] for k in keys}


def thread_is_test(seed: int, thread: int, test_fraction: float, world: str = "forum") -> bool:
    return random.Random(f"worldpm-synthetic{_world_tag(world)}-split:{seed}:{thread}").random() < test_fraction


def generate_thread(seed: int, thread: int, n: int, *, scale: float, reply_words: int, feature_rate: float,
                    world: str = "forum", shared_weight: float = 1.0) -> list[tuple[dict, float, float]]:
    """The first n pairs of thread `thread`, independent of how many threads or pairs follow: (PairRecord, true reward of
    chosen, true reward of rejected) each; the rewards are also in the record's meta."""
    tag = _world_tag(world)
    weights = world_weights(world, shared_weight)
    rng = random.Random(f"worldpm-synthetic{tag}:{seed}:{thread}")
    thread_id = f"synthetic{tag}-{seed}-{thread}"
    template = "Write a short note about the {}." if world == "forum" else "Review the change to the {}."
    prompt = [{"role": "user", "content": template.format(rng.choice(TOPICS))}]
    rows = []
    for k in range(n):
        a, b = _reply(rng, reply_words, feature_rate, world), _reply(rng, reply_words, feature_rate, world)
        ra, rb = true_reward(a, scale, weights), true_reward(b, scale, weights)
        p_a = sigmoid(ra - rb)
        a_wins = rng.random() < p_a
        (chosen, r_c, cid), (rejected, r_r, rid) = ((a, ra, "a"), (b, rb, "b")) if a_wins else ((b, rb, "b"), (a, ra, "a"))
        meta = {"pair_index": k, "reward_chosen": r_c, "reward_rejected": r_r, "p_chosen": sigmoid(r_c - r_r),
                "delta_ab": ra - rb, "features_chosen": feature_counts(chosen, weights),
                "features_rejected": feature_counts(rejected, weights), "licence": "synthetic (CC0)"}
        row = {"id": pair_id(SOURCE, thread_id, f"{k}{cid}", f"{k}{rid}"), "source": SOURCE, "domain": f"synthetic{tag}",
               "thread_id": thread_id, "prompt": prompt, "chosen": chosen, "rejected": rejected,
               "chosen_score": 1.0, "rejected_score": 0.0, "meta": json.dumps(meta, sort_keys=True)}
        rows.append((row, r_c, r_r))
    return rows


def generate(n_pairs: int, seed: int, test_fraction: float, *, scale: float, reply_words: int, feature_rate: float,
             pairs_per_thread: int, world: str = "forum", shared_weight: float = 1.0):
    """Yield (split, PairRecord, true reward of chosen, true reward of rejected) for the first n_pairs pairs of the stream,
    threads in order."""
    thread = 0
    left = n_pairs
    while left > 0:
        n = min(pairs_per_thread, left)
        split = "test" if thread_is_test(seed, thread, test_fraction, world) else "train"
        for row, r_chosen, r_rejected in generate_thread(seed, thread, n, scale=scale, reply_words=reply_words,
                                                         feature_rate=feature_rate, world=world, shared_weight=shared_weight):
            yield split, row, r_chosen, r_rejected
        left -= n
        thread += 1


class BayesMeter:
    """Running Bayes-optimal figures of one split, from each pair's true reward difference."""

    def __init__(self):
        self.n = 0
        self.loss_sum = self.loss_sq = self.expected_sum = 0.0
        self.correct = self.ties = 0
        self.expected_accuracy = 0.0

    def add(self, r_chosen: float, r_rejected: float) -> None:
        d = r_chosen - r_rejected
        loss = bt_loss(d)
        self.n += 1
        self.loss_sum += loss
        self.loss_sq += loss * loss
        self.expected_sum += expected_bt_loss(d)  # symmetric in the sign of d, so the label does not matter
        self.correct += d > 0
        self.ties += d == 0
        self.expected_accuracy += 0.0 if d == 0 else max(sigmoid(d), sigmoid(-d))

    def summary(self) -> dict:
        if self.n == 0:
            return {"n": 0}
        mean = self.loss_sum / self.n
        var = max(self.loss_sq / self.n - mean * mean, 0.0)
        return {"n": self.n, "bt_loss": mean, "bt_loss_se": math.sqrt(var / self.n), "bt_loss_expected": self.expected_sum / self.n,
                "accuracy": self.correct / self.n, "accuracy_expected": self.expected_accuracy / self.n,
                "tie_fraction": self.ties / self.n}


def _check(n_pairs, test_fraction, seed, scale, reply_words, feature_rate, pairs_per_thread, nested_sizes, world="forum",
           shared_weight=1.0) -> None:
    if world not in WORLDS:
        raise SyntheticDataError(f"world={world!r} (choose {' or '.join(WORLDS)})")
    if isinstance(shared_weight, bool) or not isinstance(shared_weight, (int, float)) or not math.isfinite(shared_weight):
        raise SyntheticDataError(f"shared_weight={shared_weight!r} must be a number")
    def whole(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SyntheticDataError(f"{name}={v!r} must be a whole number >= {lo}")

    whole("n_pairs", n_pairs, 2)
    whole("seed", seed, 0)
    whole("reply_words", reply_words, 2)
    whole("pairs_per_thread", pairs_per_thread, 1)
    for name, v in (("test_fraction", test_fraction), ("feature_rate", feature_rate)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise SyntheticDataError(f"{name}={v!r} must be a number strictly between 0 and 1")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise SyntheticDataError(f"scale={scale!r} must be a positive number")
    if not isinstance(nested_sizes, (list, tuple)):
        raise SyntheticDataError(f"nested_sizes={nested_sizes!r} must be a list of pair counts")


def write_synthetic_dataset(output_dir: str | os.PathLike, n_pairs: int = DEFAULTS["n_pairs"],
                            test_fraction: float = DEFAULTS["test_fraction"], seed: int = DEFAULTS["seed"], *,
                            scale: float = DEFAULTS["scale"], reply_words: int = DEFAULTS["reply_words"],
                            feature_rate: float = DEFAULTS["feature_rate"], pairs_per_thread: int = DEFAULTS["pairs_per_thread"],
                            nested_sizes: Sequence[int] = (), nested_dir: str | os.PathLike | None = None,
                            max_rows_per_shard: int = DEFAULTS["max_rows_per_shard"], overwrite: bool = False,
                            world: str = DEFAULTS["world"], shared_weight: float = DEFAULTS["shared_weight"]) -> dict:
    """Write a synthetic PairRecord dataset: train/, test/, stats.json, manifest.json (last). Returns the manifest.

    `n_pairs` counts train + test pairs. With `nested_sizes`, also writes `nested_dir/n-{n}` (default `<output_dir>-nested`)
    holding the first n train pairs and the whole test split (data_prep.nested)."""
    nested_sizes = list(nested_sizes or [])
    _check(n_pairs, test_fraction, seed, scale, reply_words, feature_rate, pairs_per_thread, nested_sizes, world, shared_weight)
    out = Path(output_dir)
    try:
        prepare_output_dir(out, overwrite)
    except NestedDataError as exc:
        raise SyntheticDataError(str(exc)) from None
    params = {"n_pairs": n_pairs, "test_fraction": test_fraction, "seed": seed, "scale": scale, "reply_words": reply_words,
              "feature_rate": feature_rate, "pairs_per_thread": pairs_per_thread}
    if world != "forum":  # the forum world's manifest stays byte-identical to before worlds existed
        params.update(world=world, shared_weight=shared_weight)
    start = time.time()
    meters = {s: BayesMeter() for s in ("train", "test")}
    threads = {s: set() for s in meters}
    # Each shard appears under its final name only once complete; an error or kill leaves no manifest.json behind.
    with ShardWriter(out / "train", max_rows_per_shard) as train, ShardWriter(out / "test", max_rows_per_shard) as test:
        writers = {"train": train, "test": test}
        for split, row, r_chosen, r_rejected in _progress(generate(n_pairs, seed, test_fraction, scale=scale, reply_words=reply_words,
                                             feature_rate=feature_rate, pairs_per_thread=pairs_per_thread, world=world,
                                             shared_weight=shared_weight), n_pairs):
            writers[split].write(row)
            meters[split].add(r_chosen, r_rejected)
            threads[split].add(row["thread_id"])
    shards = {s: [p.name for p in w.shards] for s, w in writers.items()}
    if meters["test"].n == 0 or meters["train"].n == 0:
        empty = "test" if meters["test"].n == 0 else "train"
        raise SyntheticDataError(f"the {empty} split is empty with n_pairs={n_pairs}, test_fraction={test_fraction}, "
                                 f"pairs_per_thread={pairs_per_thread}; generate more pairs")
    bayes = {s: m.summary() for s, m in meters.items()}
    reward = {"formula": "r*(reply) = scale * sum_w weights[w] * count(w, reply)", "scale": scale,
              "weights": world_weights(world, shared_weight), "label": "P(a chosen over b) = sigmoid(r*(a) - r*(b)), one draw per pair"}
    if world != "forum":
        reward.update(world=world, shared_weight=shared_weight, shared_weights=dict(FEATURE_WEIGHTS), own_weights=dict(OWN_WEIGHTS))
    stats = {"source": SOURCE, "input": {"pairs_generated": n_pairs, "threads": len(threads["train"]) + len(threads["test"])},
             "kept": {s: meters[s].n for s in writers}, "threads": {s: len(t) for s, t in threads.items()}, "dropped": {},
             "bayes": bayes, "bayes_bt_loss": bayes["test"]["bt_loss"], "bayes_bt_loss_expected": bayes["test"]["bt_loss_expected"],
             "seconds": round(time.time() - start, 3)}
    write_json_atomic(out / "stats.json", stats, **JSON_FORMAT)
    manifest = {"source": SOURCE, "created_by": "data_prep.synthetic", "params": params, "reward": reward,
                "splits": {s: {"pairs": meters[s].n, "threads": len(threads[s]), "shards": shards[s]} for s in writers},
                "bayes": bayes, "bayes_bt_loss": bayes["test"]["bt_loss"],
                "bayes_bt_loss_expected": bayes["test"]["bt_loss_expected"], "complete": True}
    write_json_atomic(out / "manifest.json", manifest, **JSON_FORMAT)
    if nested_sizes:
        root = Path(nested_dir) if nested_dir is not None else out.with_name(out.name + "-nested")
        try:
            manifest["nested"] = [str(p) for p in write_nested_subsets(out, nested_sizes, root, overwrite=overwrite,
                                                                        max_rows_per_shard=max_rows_per_shard)]
        except NestedDataError as exc:
            raise SyntheticDataError(str(exc)) from None
    return manifest


def _progress(items, total):
    from tqdm import tqdm  # a base dependency

    return tqdm(items, total=total, desc="synthetic pairs", unit="pair", disable=None, mininterval=1.0)


def run(cfg: DictConfig) -> dict:
    """`python -m data_prep.synthetic output_dir=DIR n_pairs=N [seed=... test_fraction=... nested_sizes=[...] ...]`
    (configs/synthetic.yaml): writes the dataset and prints its size and Bayes loss."""
    cfg = check("synthetic", cfg, SyntheticDataError)  # types, ranges and paths (configs/synthetic.yaml's schema): one line
    options = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("name", "output_dir")}
    try:
        manifest = write_synthetic_dataset(str(cfg.output_dir), **options)
    except OSError as exc:  # an unwritable output_dir: the user's to fix, one line
        raise SyntheticDataError(str(exc)) from None
    splits = manifest["splits"]
    print(f"wrote {cfg.output_dir}: {splits['train']['pairs']} train / {splits['test']['pairs']} test pairs; "
          f"Bayes-optimal test BT loss {manifest['bayes_bt_loss']:.4f} "
          f"(expected over labels {manifest['bayes_bt_loss_expected']:.4f})")
    for path in manifest.get("nested", []):
        print(f"nested subset: {path}")
    return manifest


main = hydra_entry("synthetic")(run)

if __name__ == "__main__":
    main()
