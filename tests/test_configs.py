import pytest
import torch
from omegaconf import OmegaConf

from worldpm.config import compose, config_dir

# Published totals of the Qwen2.5 base models (causal LM, as counted by their model cards).
PUBLISHED = {"qwen2.5-0.5b": 0.494e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.61e9, "qwen2.5-72b": 72.7e9}


def model_cfg(name):
    return OmegaConf.to_container(compose("score", [f"model={name}", "input=x"]).model, resolve=True)


def n_params(module):
    return sum(p.numel() for p in module.parameters())  # parameters() counts a tied weight once


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_large_configs_match_published_parameter_counts_on_meta_device(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    cfg = model_cfg(name)
    assert cfg["path"].startswith("Qwen/Qwen2.5-") and cfg["path"].lower().endswith(name.split("-")[-1])
    arch = dict(cfg["arch"])
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch))
    total = n_params(lm)
    assert abs(total - PUBLISHED[name]) / PUBLISHED[name] < 0.01, total
    tied = cfg["arch"]["tie_word_embeddings"]
    assert tied == (name in ("qwen2.5-0.5b", "qwen2.5-1.5b"))  # the small ones tie the embedding and the LM head
    h = cfg["arch"]["hidden_size"]
    for head, head_params in (("mlp", h * h + h + h + 1), ("linear", h)):
        rm = RewardModel.from_config(cfg["arch"], load_tokenizer("tiny"), head=head, device="meta")
        lm_head = 0 if tied else lm.lm_head.weight.numel()
        assert n_params(rm) == total - lm_head + head_params


def test_tiny_is_tiny():
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    rm = RewardModel.from_config(model_cfg("tiny")["arch"], load_tokenizer("tiny"))
    assert 1e5 < n_params(rm) < 5e6
    assert len(rm.tokenizer) <= rm.config.vocab_size


def test_tiny_qwen_uses_the_real_tokenizer_vocabulary():
    cfg = model_cfg("tiny-qwen")
    assert cfg["tokenizer"] == "qwen" and cfg["arch"]["vocab_size"] >= 151646 and cfg["arch"]["hidden_size"] == 64


def test_every_model_config_composes():
    names = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
    assert {"tiny", "tiny-qwen", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-72b"} <= set(names)
    for name in names:
        cfg = model_cfg(name)
        assert cfg["name"] == name and cfg["head"] in ("mlp", "linear")


# The canonical keys of each verb (docs/architecture.md, "Command line"), and which of them a user must give (???).
CANONICAL = {
    "collect": ["source.name", "source.path", "output_dir", "workers", "pairs.max_per_question", "split.test_fraction", "overwrite"],
    "train": ["model.name", "model.path", "data.path", "output_dir", "trainer.max_steps", "trainer.pairs_per_step", "trainer.lr",
              "trainer.save_every", "trainer.eval_every", "trainer.resume", "trainer.seed", "init_from", "wandb.mode"],
    "eval": ["model_path", "benchmark", "checkpoints", "output_dir"],
    "scaling": ["runs", "output_dir"],
    "score": ["model_path", "input", "output"],
    "serve": ["model_path", "host", "port", "api_key"],
    "compare": ["a", "b", "a_name", "b_name", "output_dir"],
}
REQUIRED = {"collect": {"source.path", "output_dir"}, "train": {"data.path"}, "eval": {"output_dir"}, "scaling": {"runs", "output_dir"},
            "score": {"input"}, "serve": set(), "compare": {"a", "b", "output_dir"}}


def _node_and_leaf(cfg, dotted):
    *parents, leaf = dotted.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    return node, leaf


def test_every_verb_config_composes_with_its_canonical_keys_and_resolves():
    from worldpm.cli import VERBS

    assert set(VERBS) == set(CANONICAL)
    for verb in VERBS:
        cfg = compose(verb, [])
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # every interpolation points somewhere
        assert resolved, verb
        missing = set()
        for key in CANONICAL[verb]:
            node, leaf = _node_and_leaf(cfg, key)
            assert leaf in node.keys(), f"{verb}: no {key}"  # (`in node` is False for a ??? value)
            if OmegaConf.is_missing(node, leaf):
                missing.add(key)
        assert missing == REQUIRED[verb], verb  # exactly these must be given on the command line
    train = compose("train", ["data.path=x"])  # the recommended setup of the model config is what train uses by default
    assert train.trainer.lr == train.model.train.lr and train.trainer.precision == train.model.train.precision
    assert train.data.max_tokens_per_micro_batch == train.model.train.max_tokens_per_micro_batch
