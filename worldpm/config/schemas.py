"""The schemas of worldpm's verb configs (train, eval, scaling, score, serve) and of the groups they share (model, benchmark).

Types and constraints live here; the defaults and what each key means live in configs/*.yaml. Checked when a config is
composed (data_prep/schema.py), before a verb's module or torch is imported. Rules that involve several keys, or the files a
path points to, are each verb's `check_*` function below. Keep this module torch-free.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, open_dict

from data_prep.entry import compose_option
from data_prep.records import dataset_problem
from data_prep.schema import ConstraintError, check_path, register, section, setting
from worldpm.errors import UserError

# The choices of keys whose code needs torch: defined here (torch-free) and imported by that code, so they are stated once.
DTYPE_CHOICES = ("auto", "checkpoint", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
PRECISIONS = ("fp32", "bf16")
HEADS = ("mlp", "linear")  # worldpm.model.checkpoint
READOUTS = ("reward_token", "before_reward_token")
LAYOUTS = ("packed", "shared_prompt", "padded")  # worldpm.data.packing
ATTENTION = ("auto", "varlen", "block_mask")
SCHEDULES = ("constant", "cosine", "linear")  # worldpm.train.engine
WANDB_MODES = ("online", "offline", "disabled")  # worldpm.train.metrics
UNITS = ("auto", "pairs", "threads")  # worldpm.train.prepare: what a step draws
OBJECTIVES = ("pairs", "listwise")  # worldpm.data.threads
LIKELIHOODS = ("bradley_terry", "plackett_luce")
WEIGHTINGS = ("thread", "term")
CATEGORY_NAMES = ("adversarial", "objective", "subjective", "in_distribution")


# ---------------------------------------------------------------------------------------------------------------- shared groups
@dataclass
class ModelTrain:
    """A model's recommended training setup (worldpm train's defaults for it)."""

    deepspeed: Optional[str] = setting()
    nodes: int = setting(min=1)
    gpus_per_node: int = setting(min=0)
    precision: str = setting(choices=PRECISIONS)
    lr: float = setting(above=0)
    max_tokens_per_micro_batch: int = setting(min=2)
    activation_checkpointing: bool = setting()


@dataclass
class Lora:
    """LoRA / QLoRA through peft (worldpm/model/lora.py): adapters on a frozen backbone, the reward head trained."""

    enabled: bool = setting()
    r: int = setting(min=1)
    alpha: float = setting(above=0)
    dropout: float = setting(min=0, below=1)
    target_modules: list[str] = setting()
    use_rslora: bool = setting()
    quantize: Optional[str] = setting(choices=(None, "4bit", "8bit"))


@dataclass
class Model:
    name: str = setting()
    path: Optional[str] = setting(path="local_or_hub")
    tokenizer: Optional[str] = setting()
    head: str = setting(choices=HEADS)
    readout: str = setting(choices=READOUTS)
    dtype: str = setting(choices=DTYPE_CHOICES[2:])
    attn_implementation: str = setting()
    max_length: int = setting(min=8)
    seed: int = setting()
    arch: dict[str, Any] = setting({})
    lora: Optional[Lora] = setting(None)
    train: ModelTrain = section(ModelTrain)


@dataclass
class Benchmark:
    """One benchmark entry (configs/benchmark/<name>.yaml); keys a loader does not use stay null."""

    path: Optional[str] = setting(None, path="local_or_hub")
    split: Optional[str] = setting(None)
    prefer: Optional[str] = setting(None)
    max_items: Optional[int] = setting(None, min=1)
    loader: Optional[str] = setting(None)
    prompts: Optional[int] = setting(None, min=1)  # bon_synthetic: prompts, replies per prompt, draws
    samples: Optional[int] = setting(None, min=2)
    seed: Optional[int] = setting(None, min=0)
    bootstrap_samples: Optional[int] = setting(None, min=1)
    hub_name: Optional[str] = setting(None)
    hub_data_files: Optional[str] = setting(None)
    record_split: Optional[str] = setting(None)
    correctness_pairs: Optional[str] = setting(None, choices=(None, "sampled", "all"))
    sections: Optional[dict[str, dict[str, int]]] = setting(None)
    subsets: Optional[dict[str, Any]] = setting(None)
    categories: dict[str, Optional[str]] = setting({})


@dataclass
class Scoring:
    """What eval, score and serve share: the model to load (worldpm.model.loader) and how."""

    model: Model = section(Model)
    model_path: Optional[str] = setting(path="local_or_hub")
    device: str = setting()
    dtype: Optional[str] = setting(choices=(None,) + DTYPE_CHOICES)
    max_length: Optional[int] = setting(min=8)


def check_scoring(cfg: DictConfig) -> None:
    """Keys eval, score and serve share: device, max_padding (auto | null | a fraction)."""
    device = str(cfg.device)
    if not (device in ("auto", "cpu") or device.startswith(("cuda", "mps", "xpu"))):
        raise ConstraintError(f"device={device!r}: use auto, cpu, cuda or cuda:N")
    for key in ("max_padding", "batching.max_padding"):
        parent, _, last = key.rpartition(".")
        node = cfg.get(parent) if parent else cfg
        if node is not None and last in node:
            value = node[last]
            if value is not None and value != "auto" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                              and 0 <= value < 1):
                raise ConstraintError(f"{key}={value!r} must be auto, null or a fraction in [0, 1)")


# ---------------------------------------------------------------------------------------------------------------- train
@dataclass
class MixEntry:
    path: str = setting(path="dir")
    weight: float = setting(1.0, above=0)
    name: Optional[str] = setting(None)


@dataclass
class Data:
    path: str = setting(path="dir")
    weight: float = setting(above=0)
    mix: list[MixEntry] = setting([])
    max_tokens_per_micro_batch: int = setting(min=2)
    unit: str = setting(choices=UNITS)
    packing: str = setting(choices=LAYOUTS)
    attention: str = setting(choices=ATTENTION)
    num_proc: int = setting(min=1)
    cache_dir: Optional[str] = setting(path="output")
    eval_pairs: int = setting(min=0)


@dataclass
class Listwise:
    likelihood: str = setting(choices=LIKELIHOODS)
    weighting: str = setting(choices=WEIGHTINGS)


@dataclass
class Loss:
    objective: str = setting(choices=OBJECTIVES)
    listwise: Listwise = section(Listwise)
    margin_column: Optional[str] = setting()
    center_coefficient: float = setting(min=0)


@dataclass
class Trainer:
    max_steps: Optional[int] = setting(min=0)
    epochs: float = setting(above=0)
    pairs_per_step: int = setting(min=1)
    lr: float = setting(above=0)
    lr_schedule: str = setting(choices=SCHEDULES)
    warmup_steps: Optional[int] = setting(min=0)
    warmup_ratio: float = setting(min=0, max=1)
    min_lr_ratio: float = setting(min=0, max=1)
    weight_decay: float = setting(min=0)
    betas: list[float] = setting(min=0, below=1)
    eps: float = setting(above=0)
    max_grad_norm: float = setting(min=0)
    optimizer: str = setting(choices=("auto", "adamw_torch", "cpu_adam"))
    precision: str = setting(choices=PRECISIONS)
    activation_checkpointing: bool = setting()
    seed: int = setting()
    resume: Optional[str] = setting()
    save_every: int = setting(min=0)
    keep_last: int = setting(min=0)
    keep_series: bool = setting()
    save_hf: bool = setting()
    eval_every: int = setting(min=0)
    log_every: int = setting(min=1)
    max_bad_steps: int = setting(min=1)
    progress: str = setting(choices=("auto", "true", "false", "True", "False"))
    shm_comm: bool = setting()


@dataclass
class Wandb:
    mode: str = setting(choices=WANDB_MODES)
    project: Optional[str] = setting()
    group: Optional[str] = setting()
    name: Optional[str] = setting()
    tags: list[str] = setting([])


@dataclass
class TrainConfig:
    model: Model = section(Model)
    deepspeed: Optional[dict[str, Any]] = setting(None)
    output_dir: str = setting(path="output")
    init_from: Optional[str] = setting(path="local_or_hub")
    data: Data = section(Data)
    loss: Loss = section(Loss)
    trainer: Trainer = section(Trainer)
    wandb: Wandb = section(Wandb)
    sweep: Optional[dict[str, Any]] = setting(None)  # +sweep=<grid> (configs/sweep/)
    sweep_data: Optional[dict[str, Any]] = setting(None)  # +sweep/data=<point>


def resolve_deepspeed(cfg: DictConfig) -> str:
    """`deepspeed=auto` (the default) becomes the model's recommended ZeRO config, `model.train.deepspeed` (null: plain PyTorch
    in one process), in place in `cfg`, per job (a sweep over models gives each its own); an explicit `deepspeed=...` stays.
    Returns what runs, and why, for the log and errors."""
    chosen = cfg.get("deepspeed")
    if chosen is None:
        return "deepspeed=null"
    if chosen.get("name") != "auto":
        return f"deepspeed={chosen.get('name')}"
    recommended = (cfg.model.get("train") or {}).get("deepspeed")
    if recommended == "auto":
        raise UserError(f"model.train.deepspeed=auto (model {cfg.model.name}) must name a config in configs/deepspeed/ or be null")
    with open_dict(cfg):
        cfg.deepspeed = None if recommended is None else compose_option("deepspeed", str(recommended), "model.train.deepspeed",
                                                                         UserError)
    return f"deepspeed={'null' if recommended is None else recommended} (deepspeed=auto: model.train.deepspeed of {cfg.model.name})"


def expected_world_size() -> int:
    """The number of ranks the launcher started, read before any process group exists (torchrun, SLURM, submitit)."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or os.environ.get("SUBMITIT_LOCAL_NTASKS") or 1)


def check_allocation(world: int) -> None:
    """A job of Hydra's submitit SLURM launcher has the resources the launcher resolved from the multirun's primary config;
    its own config (e.g. another model's `model.train.nodes`) may ask for others: say so instead of training on the wrong
    number of GPUs."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().launcher
    if launcher.get("nodes") is None or launcher.get("tasks_per_node") is None:
        return
    if int(launcher.nodes) * int(launcher.tasks_per_node) != world:
        raise UserError(f"this SLURM job has {world} tasks but its config asks for hydra.launcher.nodes x tasks_per_node = "
                        f"{launcher.nodes} x {launcher.tasks_per_node}: Hydra's submitit launcher gives every job of a multirun "
                        "the resources of the primary config; run one multirun per model (model=...)")


def check_train(cfg: DictConfig) -> None:
    resolved = copy.deepcopy(cfg)  # the recipe resolves deepspeed=auto itself, to log where its choice came from
    engine = resolve_deepspeed(resolved)
    if not str(cfg.output_dir).strip():
        raise ConstraintError("output_dir is empty")
    for key, path in [("data.path", cfg.data.path)] + [(f"data.mix[{i}].path", m.path) for i, m in enumerate(cfg.data.mix)]:
        problem = dataset_problem(path, "train")
        if problem:
            raise ConstraintError(f"{key}={path} {problem}")
    need = 2 * int(cfg.model.max_length)
    if cfg.data.max_tokens_per_micro_batch < need:
        raise ConstraintError(f"data.max_tokens_per_micro_batch={cfg.data.max_tokens_per_micro_batch} cannot hold one pair: two "
                              f"sequences of up to model.max_length={cfg.model.max_length} tokens need {need}; raise it or lower "
                              "model.max_length")
    if len(cfg.trainer.betas) != 2:
        raise ConstraintError(f"trainer.betas={list(cfg.trainer.betas)} must be two numbers, e.g. [0.9,0.95]")
    if resolved.deepspeed is not None:
        stage = (resolved.deepspeed.get("zero_optimization") or {}).get("stage")
        if stage not in (0, 1, 2, 3):
            raise ConstraintError(f"deepspeed.zero_optimization.stage={stage!r} must be 0, 1, 2 or 3")
    unit = cfg.data.unit if cfg.data.unit != "auto" else ("threads" if cfg.loss.objective == "listwise" else "pairs")
    if cfg.loss.objective == "listwise" and unit != "threads":
        raise ConstraintError("loss.objective=listwise reads whole threads: set data.unit=threads (or auto)")
    if unit == "threads":
        if cfg.loss.margin_column:
            raise ConstraintError("loss.margin_column is a column of pair shards; thread shards have none (data.unit=pairs)")
        for key, path in [("data.path", cfg.data.path)] + [(f"data.mix[{i}].path", m.path) for i, m in enumerate(cfg.data.mix)]:
            if not any((Path(str(path)) / "threads" / "train").glob("*.parquet")):
                raise ConstraintError(f"{key}={path} has no threads/train/*.parquet thread shards (collect with "
                                      "output.threads=true, or train on pairs: data.unit=pairs)")
    if cfg.loss.objective == "listwise" and cfg.loss.listwise.likelihood == "plackett_luce" and cfg.loss.center_coefficient:
        raise ConstraintError("loss.center_coefficient centres pairs of rewards; with loss.listwise.likelihood=plackett_luce set "
                              "it to 0")
    world = expected_world_size()
    if resolved.deepspeed is None and world > 1:
        raise ConstraintError(f"{engine} trains in one process, but this job has {world} ranks; pass deepspeed=zero1|zero2|zero3 "
                              "(configs/deepspeed/)")
    check_allocation(world)
    if cfg.trainer.pairs_per_step < world:
        raise ConstraintError(f"trainer.pairs_per_step={cfg.trainer.pairs_per_step} is smaller than the {world} ranks of this "
                              "job: every rank needs at least one pair per step")


register("train", TrainConfig, check_train)


# ---------------------------------------------------------------------------------------------------------------- eval
@dataclass
class Bootstrap:
    samples: int = setting(min=1)
    confidence: float = setting(above=0, below=1)


@dataclass
class Style:
    enabled: bool = setting()
    l2: float = setting(min=0)
    folds: int = setting(min=2)


@dataclass
class Report:
    plots: bool = setting()


@dataclass
class Series:
    skip_done: bool = setting()


@dataclass
class EvalConfig(Scoring):
    benchmark: dict[str, Benchmark] = setting({})
    output_dir: str = setting(path="output")
    checkpoints: Any = setting()  # null | all | [step-00000120, final]
    run_dir: Optional[str] = setting(path="dir")
    device_map: Optional[str] = setting()
    max_tokens_per_batch: int = setting(min=1)
    max_batch_size: int = setting(min=1)
    max_padding: Any = setting()
    shared_prompt: bool = setting()
    seed: int = setting()
    bootstrap: Bootstrap = section(Bootstrap)
    style: Style = section(Style)
    report: Report = section(Report)
    series: Series = section(Series)


def check_eval(cfg: DictConfig) -> None:
    check_scoring(cfg)
    if not cfg.benchmark:
        raise ConstraintError("no benchmark selected (benchmark=[rewardbench,rmbench,ppe,...])")
    for name, bench in cfg.benchmark.items():
        for key, value in bench.categories.items():
            if value is not None and value not in CATEGORY_NAMES:
                raise ConstraintError(f"benchmark.{name}.categories.{key}={value!r} is not one of {list(CATEGORY_NAMES)} or null")
    if cfg.checkpoints is not None:
        if cfg.model_path:
            raise ConstraintError("give either model_path=... or checkpoints=... with run_dir=..., not both")
        if not cfg.run_dir:
            raise ConstraintError("checkpoints=... needs run_dir=<a training output_dir>")
        if not (cfg.checkpoints == "all" or isinstance(cfg.checkpoints, (list, ListConfig))):
            raise ConstraintError(f"checkpoints={cfg.checkpoints!r}: use all or a list of names, e.g. [step-00000120,final]")


register("eval", EvalConfig, check_eval)


# ---------------------------------------------------------------------------------------------------------------- scaling
@dataclass
class ScalingBootstrap:
    n: int = setting(min=1)
    n_saturating: int = setting(min=0)
    min_points: int = setting(min=2)
    seed: int = setting()


@dataclass
class ScalingConfig:
    runs: list[str] = setting(path="exists")
    output_dir: str = setting(path="output")
    metric: str = setting()
    x: str = setting(choices=("pairs_seen", "tokens_seen", "step"))
    points: str = setting(choices=("all", "final"))
    min_pairs: float = setting(min=0)
    levels: list[str] = setting()
    saturating: bool = setting()
    model_size_param: str = setting(choices=("n_params_non_embedding", "n_params"))
    ci: float = setting(above=0, below=1)
    bootstrap: ScalingBootstrap = section(ScalingBootstrap)
    bayes_loss: Any = setting()  # a number, or a source=synthetic dataset directory
    bayes_key: Optional[str] = setting()
    plots: bool = setting()
    formats: list[str] = setting()


def check_scaling(cfg: DictConfig) -> None:
    if not cfg.runs:
        raise ConstraintError("runs: give at least one directory (runs=[dir,...])")
    bad = [level for level in cfg.levels if level not in ("category", "subtask")]
    if bad or not cfg.levels:
        raise ConstraintError(f"levels={list(cfg.levels)}: choose from [category, subtask]")
    bad = [f for f in cfg.formats if f not in ("png", "svg", "pdf")]
    if bad:
        raise ConstraintError(f"formats={list(cfg.formats)}: choose from [png, svg, pdf]")
    if cfg.bayes_loss is not None and not isinstance(cfg.bayes_loss, (int, float)):
        check_path("bayes_loss", cfg.bayes_loss, "dir")


register("scaling", ScalingConfig, check_scaling)


# ---------------------------------------------------------------------------------------------------------------- score
@dataclass
class ScoreConfig(Scoring):
    input: str = setting(path="exists")
    split: str = setting()
    output: Optional[str] = setting()
    max_tokens_per_batch: int = setting(min=1)
    max_batch_size: int = setting(min=1)
    max_padding: Any = setting()
    shared_prompt: bool = setting()
    chunk_size: int = setting(min=1)


def check_score(cfg: DictConfig) -> None:
    check_scoring(cfg)
    if cfg.output is not None:
        suffix = Path(str(cfg.output)).suffix.lower()
        if suffix not in (".jsonl", ".json", ".parquet"):
            raise ConstraintError(f"output={cfg.output}: use a .jsonl or .parquet file name")
        check_path("output", str(Path(str(cfg.output)).parent), "output")


register("score", ScoreConfig, check_score)


# ---------------------------------------------------------------------------------------------------------------- serve
@dataclass
class Batching:
    enabled: bool = setting()
    window_ms: float = setting(min=0)
    max_tokens: int = setting(min=1)
    max_batch_size: int = setting(min=1)
    max_padding: Any = setting()
    shared_prompt: bool = setting()


@dataclass
class Limits:
    max_items_per_request: int = setting(min=1)
    max_chars_per_item: int = setting(min=1)
    max_body_bytes: int = setting(min=1)
    max_pending_requests: int = setting(min=1)


@dataclass
class ServeConfig(Scoring):
    host: str = setting()
    port: int = setting(min=0, max=65535)
    api_key: Optional[str] = setting()
    normalize: bool = setting()
    clip: Optional[float] = setting(above=0)
    batching: Batching = section(Batching)
    limits: Limits = section(Limits)
    shutdown_timeout_s: float = setting(min=0)
    access_log: bool = setting()
    log_every_s: float = setting(min=0)


def check_serve(cfg: DictConfig) -> None:
    check_scoring(cfg)
    if cfg.api_key is not None and not str(cfg.api_key).strip():
        raise ConstraintError("api_key is set but empty; give a real key or leave it unset (null)")


register("serve", ServeConfig, check_serve)


# ---------------------------------------------------------------------------------------------------------------- compare
@dataclass
class CompareConfig:
    a: str = setting(path="dir")
    b: str = setting(path="dir")
    a_name: Optional[str] = setting()
    b_name: Optional[str] = setting()
    output_dir: str = setting(path="output")
    seed: int = setting()
    bootstrap: Bootstrap = section(Bootstrap)
    plots: bool = setting()


def check_compare(cfg: DictConfig) -> None:
    if cfg.bootstrap.samples < 100:
        raise ConstraintError(f"bootstrap.samples={cfg.bootstrap.samples} must be >= 100 for a 95% interval to mean anything")


register("compare", CompareConfig, check_compare)
