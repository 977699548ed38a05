"""The schemas of data_prep's configs: `worldpm collect` (configs/collect.yaml with one configs/source/<name>.yaml: a forum
dump, a public preference set, or the synthetic ground truth), and the tools `python -m data_prep.nested` and
`python -m data_prep.synthetic`. Types and constraints live here; the defaults and what
each key means live in the YAML files. See data_prep/schema.py for how they are checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from data_prep.html_markdown import CONVERTERS
from data_prep.pairing import SCORE_RULES
from data_prep.preference_sets import SETS
from data_prep.schema import MISSING, ConstraintError, register, section, setting


# ---------------------------------------------------------------------------------------------------------------- sources
@dataclass
class StackExchangeSource:
    name: str = setting(choices=("stackexchange",))
    path: str = setting(path="exists")
    site: Optional[str] = setting()
    read_users: bool = setting()
    read_votes: bool = setting()
    drop_closed: bool = setting()
    drop_community_wiki: bool = setting()
    drop_deleted_owner: bool = setting()
    converter: str = setting(choices=CONVERTERS)
    max_row_bytes: int = setting(min=1)
    order_rule: Optional[str] = setting(choices=(None, "preferred_not_earlier"))
    max_per_question: Optional[int] = setting(min=1)  # what pairs.max_per_question=auto means for this source
    min_score_gap: float = setting(min=0)  # what pairs.min_score_gap=auto means for this source


@dataclass
class RedditSource:
    name: str = setting(choices=("reddit",))
    path: str = setting(path="exists")
    subreddits: Optional[list[str]] = setting()
    min_post_score: int = setting()
    min_comment_score: int = setting()
    drop_nsfw: bool = setting()
    drop_edited_posts: bool = setting()
    max_created_utc: Optional[int] = setting(min=0)
    max_comments_per_post: int = setting(min=2)
    strip_link_urls: bool = setting()
    max_row_bytes: int = setting(min=1)
    order_rule: Optional[str] = setting(choices=(None, "preferred_not_earlier"))
    max_per_question: Optional[int] = setting(min=1)
    min_score_gap: float = setting(min=0)


@dataclass
class SyntheticSource:
    name: str = setting(choices=("synthetic",))
    n_pairs: int = setting(min=2)
    seed: int = setting()
    scale: float = setting(above=0)
    reply_words: int = setting(min=1)
    feature_rate: float = setting(min=0, max=1)
    pairs_per_thread: int = setting(min=1)
    nested_sizes: list[int] = setting(min=1)
    nested_dir: Optional[str] = setting(path="output")
    max_rows_per_shard: int = setting(min=1)
    world: str = setting(choices=("forum", "finetune"))
    shared_weight: float = setting()


@dataclass
class PreferenceSetSource:
    """What every public preference set shares (configs/source/<set>.yaml; data_prep/preference_sets.py reads them)."""

    name: str = setting(choices=SETS)
    path: str = setting(path="local_or_hub")  # a file, a directory, or a hub id
    max_per_question: Optional[int] = setting(min=1)
    min_score_gap: float = setting(min=0)
    use_source_split: bool = setting()
    hub_name: Optional[str] = setting()
    hub_data_files: Any = setting()  # null, a file or a list of files
    hub_split: str = setting()
    max_row_bytes: int = setting(min=1)
    order_rule: Optional[str] = setting(choices=(None,))


HELPSTEER2_RATINGS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


@dataclass
class HelpSteer2Source(PreferenceSetSource):
    kind: str = setting(choices=("preference", "ratings"))
    attribute_weights: dict[str, float] = setting({})


@dataclass
class UltraFeedbackSource(PreferenceSetSource):
    score: str = setting(choices=("overall_score", "fine-grained_score", "annotations"))


@dataclass
class ShpSource(PreferenceSetSource):
    min_score_ratio: float = setting(min=1)


@dataclass
class PreferenceFields:
    prompt: str = setting()
    chosen: str = setting()
    rejected: str = setting()
    chosen_score: Optional[str] = setting()
    rejected_score: Optional[str] = setting()
    split: Optional[str] = setting()
    domain: Optional[str] = setting()


@dataclass
class GenericPreferenceSource(PreferenceSetSource):
    fields: PreferenceFields = section(PreferenceFields)


SOURCES: dict[str, type] = {"stackexchange": StackExchangeSource, "reddit": RedditSource, "synthetic": SyntheticSource,
                            "helpsteer2": HelpSteer2Source, "ultrafeedback": UltraFeedbackSource, "skywork": PreferenceSetSource,
                            "rlhflow": PreferenceSetSource, "shp": ShpSource, "hh_rlhf": PreferenceSetSource,
                            "preference": GenericPreferenceSource}


# ---------------------------------------------------------------------------------------------------------------- collect
@dataclass
class Pairs:
    max_per_question: Any = setting()  # an integer >= 1, null (all pairs) or auto (the source's); checked in check_collect
    score_rule: str = setting(choices=SCORE_RULES)
    min_score_gap: Any = setting()  # a number >= 0 or auto (the source's); checked in check_collect
    min_reply_chars: int = setting(min=0)
    max_reply_chars: Optional[int] = setting(min=1)
    order_rule: Optional[str] = setting(choices=(None, "auto", "preferred_not_earlier"))
    seed: int = setting()


@dataclass
class Split:
    test_fraction: float = setting(min=0, max=1)
    salt: str = setting()


@dataclass
class NearDedup:
    enabled: bool = setting()
    threshold: float = setting(above=0, max=1)
    num_perm: int = setting(min=16)
    shingle_words: int = setting(min=1)


@dataclass
class Dedup:
    exact: bool = setting()
    near: NearDedup = section(NearDedup)


@dataclass
class Contamination:
    benchmarks: list[str] = setting(path="exists")
    ngram: int = setting(min=1)
    min_words: int = setting(min=1)
    mode: str = setting(choices=("drop", "flag"))
    check_replies: bool = setting()


@dataclass
class Output:
    max_rows_per_shard: int = setting(min=1)
    threads: bool = setting()


@dataclass
class Rejects:
    max_per_reason: int = setting(min=0)


@dataclass
class CollectConfig:
    source: Any = setting()  # one of SOURCES, chosen by source.name
    output_dir: str = setting(path="output")
    overwrite: bool = setting()
    workers: int = setting(min=1)
    partitions: int = setting(min=1)
    work_dir: Optional[str] = setting(path="output")
    keep_work: bool = setting()
    pairs: Pairs = section(Pairs)
    split: Split = section(Split)
    dedup: Dedup = section(Dedup)
    contamination: Contamination = section(Contamination)
    output: Output = section(Output)
    rejects: Rejects = section(Rejects)


def check_collect(cfg: DictConfig) -> None:
    if not str(cfg.output_dir).strip():
        raise ConstraintError("output_dir is empty")
    pairs, name = cfg.pairs, cfg.source.name
    if not (pairs.max_per_question in (None, "auto") or _count(pairs.max_per_question) and pairs.max_per_question >= 1):
        raise ConstraintError(f"pairs.max_per_question={pairs.max_per_question!r} must be an integer >= 1, null (all) or auto")
    if not (pairs.min_score_gap == "auto" or _number(pairs.min_score_gap) and pairs.min_score_gap >= 0):
        raise ConstraintError(f"pairs.min_score_gap={pairs.min_score_gap!r} must be a number >= 0 (0: any difference) or auto")
    if pairs.score_rule == "stackllama_votes" and name != "stackexchange":
        raise ConstraintError("pairs.score_rule=stackllama_votes needs Stack Exchange Votes.xml (source=stackexchange)")
    if name in SETS and pairs.score_rule != "net":
        raise ConstraintError(f"pairs.score_rule={pairs.score_rule} is a forum vote rule; source={name} pairs by its own scores "
                              "(use pairs.score_rule=net)")
    if name == "helpsteer2":
        weights = dict(cfg.source.attribute_weights)
        unknown = sorted(set(weights) - set(HELPSTEER2_RATINGS))
        if unknown:
            raise ConstraintError(f"source.attribute_weights.{unknown[0]}: HelpSteer2 rates {', '.join(HELPSTEER2_RATINGS)}")
        if not any(weights.values()):
            raise ConstraintError(f"source.attribute_weights={weights} must not all be 0")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


register("collect", CollectConfig, check_collect, variants={"source": SOURCES})


# ---------------------------------------------------------------------------------------------------------------- tools
@dataclass
class NestedConfig:
    input: str = setting()  # a complete dataset: data_prep.nested checks it has manifest.json
    sizes: Any = setting()  # a positive integer or a list of them (checked in check_nested)
    output_dir: str = setting(path="output")
    overwrite: bool = setting()


def check_nested(cfg: DictConfig) -> None:
    sizes = list(cfg.sizes) if not isinstance(cfg.sizes, (int, str)) else [cfg.sizes]
    if not sizes or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
        raise ConstraintError(f"sizes={cfg.sizes!r}: expected a positive integer or a list of them, e.g. sizes=[1000,10000]")


register("nested", NestedConfig, check_nested)


@dataclass
class SyntheticConfig(SyntheticSource):
    output_dir: str = setting(path="output")
    test_fraction: float = setting(min=0, below=1)
    overwrite: bool = setting()


register("synthetic", SyntheticConfig)

__all__ = ["SOURCES", "CollectConfig", "NestedConfig", "SyntheticConfig", "MISSING"]
