"""The schemas of data_prep's configs: `worldpm collect` (configs/collect.yaml with one configs/source/<name>.yaml), and the
tools `python -m data_prep.nested` and `python -m data_prep.synthetic`. Types and constraints live here; the defaults and what
each key means live in the YAML files. See data_prep/schema.py for how they are checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from data_prep.html_markdown import CONVERTERS
from data_prep.pairing import SCORE_RULES
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


SOURCES: dict[str, type] = {"stackexchange": StackExchangeSource, "reddit": RedditSource, "synthetic": SyntheticSource}


# ---------------------------------------------------------------------------------------------------------------- collect
@dataclass
class Pairs:
    max_per_question: Optional[int] = setting(min=1)
    score_rule: str = setting(choices=SCORE_RULES)
    min_score_gap: float = setting(above=0)
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
    if cfg.pairs.score_rule == "stackllama_votes" and cfg.source.name != "stackexchange":
        raise ConstraintError("pairs.score_rule=stackllama_votes needs Stack Exchange Votes.xml (source=stackexchange)")


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
