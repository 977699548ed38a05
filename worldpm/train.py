"""`worldpm train` / `python -m worldpm.train`: Bradley-Terry reward-model training, read top to bottom.

The same program runs in one process (`deepspeed=null`: plain PyTorch, for debugging) and on every rank of a DeepSpeed ZeRO job
started by torchrun, `deepspeed --no_local_rank`, SLURM srun or Hydra's submitit launcher, on one node or many.

    validate the config (one-line errors, before anything heavy)
    join the job                              worldpm.distributed
    build the reward model                    worldpm.reward_model (ZeRO-3: partitioned as it is built)
    tokenise the pairs once, cached           worldpm.pair_data   (rank 0 first, the others read its cache)
    build the engine                          worldpm.engine      (DeepSpeed ZeRO 1/2/3 or PyTorch; AdamW, warmup+schedule)
    resume from the newest checkpoint         worldpm.checkpointing
    for each step:
        draw pairs_per_step pairs             pair_data.PairStream (deterministic, weighted, resumable)
        plan token-budget micro-batches       packing.plan_micro_batches (whole pairs; same count on every rank)
        forward packed rows, BT loss, backward   packing.collate / model_inputs, worldpm.bt_loss
        optimizer step (skipped if not finite), metrics, eval, checkpoint, preemption
    export output_dir/final/ (checkpoint contract)

Loss scaling: a step's gradient is that of the mean loss over its N global pairs. A micro-batch with n pairs contributes
`bt_loss(mean over its pairs) * n * W / N`; DeepSpeed averages gradients over the W data-parallel ranks, so the sum over all
micro-batches and ranks is exactly mean-over-N, whatever the number of micro-batches or ranks (tested: ZeRO-1/2 on 2 ranks
match one process to 1e-5).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from worldpm import checkpointing, distributed, pair_data
from worldpm.bt_loss import bt_loss, bt_losses
from worldpm.chat_format import PAD_TOKEN
from worldpm.config import hydra_entry
from worldpm.errors import UserError
from worldpm.metrics_log import WANDB_MODES, MetricsLog
from worldpm.packing import ATTENTION, LAYOUTS, collate, model_inputs, plan_micro_batches, use_attention

log = logging.getLogger("worldpm.train")

PRECISIONS = ("fp32", "bf16")
# Summed per step on each rank, then over ranks in the step's one all_reduce (the order of that tensor). STATS come from the
# rewards and stay on the device (float64) until then, so a micro-batch costs no host sync; COUNTS are known on the host.
STATS = ("loss", "objective", "correct", "rc", "rc2", "rr", "rr2", "margin", "nonfinite")
COUNTS = ("pairs", "real_tokens", "pad_tokens", "processed_tokens", "stop")  # stop: this rank got a preemption signal
SUMS = STATS + COUNTS


# ---------------------------------------------------------------------------------------------------------------- recipe
def run(cfg: DictConfig) -> dict:
    validate(cfg)
    dist = distributed.init(use_deepspeed=cfg.get("deepspeed") is not None, shm_comm=bool(cfg.trainer.shm_comm))
    signals = checkpointing.PreemptionSignals()
    try:
        result = train(cfg, dist, signals)
    finally:
        signals.restore()
    signals.forward()  # a preempted run has saved its checkpoint; now e.g. submitit may requeue the job
    return result


def train(cfg: DictConfig, dist: distributed.Dist, signals: checkpointing.PreemptionSignals) -> dict:
    tcfg, dcfg = cfg.trainer, cfg.data
    out = Path(cfg.output_dir)
    setup_logging(out, dist)
    seed = int(tcfg.seed)
    seed_everything(seed)
    ds_config = None
    if cfg.get("deepspeed") is not None:
        from worldpm.engine import deepspeed_config

        ds_config = deepspeed_config(OmegaConf.to_container(cfg.deepspeed, resolve=True), tcfg)

    # 1. the model (ZeRO-3: HfDeepSpeedConfig makes transformers build it partitioned; the object must stay referenced)
    model, hf_ds_config, model_info = build_model(cfg, ds_config, dist)
    attn_impl = use_attention(model, str(dcfg.attention), str(dcfg.packing))
    tokenizer, spec, model_config = model.tokenizer, model.spec, model.config
    log.info("model %s: %s parameters (%s non-embedding), head %s, attention %s, %s", model_info["model_name"],
             f"{model_info['n_params']:,}", f"{model_info['n_params_non_embedding']:,}", spec.head, attn_impl, tcfg.precision)

    # 2. the data, tokenised once with the reward-token contract (rank 0 first; the others read the cache)
    sources = pair_data.sources(dcfg)

    def tokenise():
        kw = dict(tokenizer=tokenizer, max_length=int(spec.max_length), system_prompt=spec.system_prompt,
                  num_proc=int(dcfg.num_proc), cache_dir=dcfg.get("cache_dir"), margin_column=cfg.loss.get("margin_column"))
        tables = [pair_data.PairTable(pair_data.load_split(s.path, "train", **kw)) for s in sources]
        test = pair_data.load_split(sources[0].path, "test", required=False, **kw)
        return tables, (pair_data.PairTable(test) if test is not None else None)

    tables, eval_table = distributed.main_first(dist, tokenise)
    n_train = sum(len(t) for t in tables)
    pairs_per_step = int(tcfg.pairs_per_step)
    max_steps = int(tcfg.max_steps) if tcfg.get("max_steps") is not None else max(1, int(float(tcfg.epochs) * n_train // pairs_per_step))
    eval_rows = eval_subset(eval_table, int(dcfg.eval_pairs))
    log.info("data: %s train pairs from %s; %d held-out pairs; %d steps x %d pairs (%.2f epochs)", f"{n_train:,}",
             ", ".join(f"{s.name}={len(t):,} (weight {s.weight:g})" for s, t in zip(sources, tables)), len(eval_rows),
             max_steps, pairs_per_step, max_steps * pairs_per_step / n_train)

    # 3. the engine: DeepSpeed ZeRO, or PyTorch for deepspeed=null
    if ds_config is not None:
        from worldpm.engine import DeepSpeedEngine

        engine = DeepSpeedEngine(model, ds_config, tcfg, max_steps, dist, hf_ds_config)
    else:
        from worldpm.engine import TorchEngine

        engine = TorchEngine(model, tcfg, max_steps, dist)
    del model  # the engine owns it now (ZeRO may have replaced its parameters)

    # 4. resume: engine state, data position, RNG, counters
    stream = pair_data.PairStream([len(t) for t in tables], [s.weight for s in sources], seed)
    counters = {"step": 0, "pairs_seen": 0, "tokens_seen": 0, "skipped_steps": 0, "nonfinite_losses": 0}
    resume_from = checkpointing.resolve_resume(out, tcfg.resume)
    if resume_from is not None:
        state, data_state = checkpointing.load(engine, resume_from, dist)
        if state.get("model_name") != model_info["model_name"]:
            raise UserError(f"{resume_from} is a checkpoint of model {state.get('model_name')!r}, not {model_info['model_name']!r}")
        stream.load_state_dict(data_state["stream"])
        counters.update(data_state["counters"])
        log.info("resumed from %s (step %d, %s pairs seen)", resume_from, counters["step"], f"{counters['pairs_seen']:,}")
    run_state = lambda: {**counters, **model_info, "seed": seed, "data_path": str(sources[0].path),  # noqa: E731
                         "world_size": dist.world_size, "max_steps": max_steps, "pairs_per_step": pairs_per_step}

    metrics = MetricsLog(out, dist.is_main, counters["step"], cfg.get("wandb"), OmegaConf.to_container(cfg, resolve=True))
    if dist.is_main:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def export_to(directory: Path) -> None:
        from worldpm.reward_model import save_checkpoint

        state_dict = engine.full_state_dict()  # collective under ZeRO-3
        if dist.is_main:
            save_checkpoint(directory, state_dict, model_config, tokenizer, spec)

    def save_checkpoint_now() -> Path:
        path = checkpointing.save(engine, out, counters["step"], run_state(), {"stream": stream.state_dict(), "counters": counters},
                                  dist, export=export_to if tcfg.save_hf else None, keep_last=int(tcfg.keep_last),
                                  keep_series=bool(tcfg.keep_series))
        log.info("saved %s", path)
        return path

    layout, attention = str(dcfg.packing), str(dcfg.attention)
    capacity = int(dcfg.max_tokens_per_micro_batch)
    compute_dtype = torch.bfloat16 if tcfg.precision == "bf16" else torch.float32
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    world = dist.world_size

    def rank_batches(table, rows) -> list:
        """This rank's micro-batches of pairs `rows` of `table`: (is a real batch, collated batch) in plan order.

        The plan comes from the length arrays, so only this rank's pairs are read; a placeholder (None) repeats pair 0."""
        rows = np.asarray(rows, dtype=np.int64)
        mine = plan_micro_batches(table.costs(layout)[rows], table.width[rows], capacity, world, layout)[dist.rank]
        needed = sorted({i for mb in mine for i in (mb or [0])})
        pairs = dict(zip(needed, table.pairs(rows[needed])))
        return [(mb is not None, collate([pairs[i] for i in (mb or [0])], layout, pad_id)) for mb in mine]

    def forward(batch):
        rewards = engine.forward(**model_inputs(batch, attention, attn_impl, compute_dtype, dist.device))
        return rewards[batch.chosen.to(rewards.device)], rewards[batch.rejected.to(rewards.device)]

    eval_batches = None  # planned, read and collated at the first evaluation, then reused

    def evaluate() -> dict:
        """Held-out BT loss and accuracy on the test split; every rank takes part (ZeRO-3 forwards are collective)."""
        nonlocal eval_batches
        if eval_batches is None:
            eval_batches = rank_batches(eval_table, eval_rows)
        sums = torch.zeros(2, dtype=torch.float64, device=dist.device)  # loss, correct: on the device until the reduce
        n = 0
        engine.eval()
        with torch.no_grad():
            for real, batch in eval_batches:
                rc, rr = forward(batch)
                if real:
                    sums += torch.stack([bt_losses(rc, rr).sum().double(), (rc > rr).sum().double()]).to(sums)
                    n += batch.n_pairs
        engine.train()
        sums = distributed.all_reduce(torch.cat([sums, torch.tensor([n], dtype=torch.float64, device=sums.device)]), dist)
        loss, correct, n = sums.tolist()
        return {"eval/loss": loss / n, "eval/accuracy": correct / n, "eval/n": int(n)}

    # 5. the loop
    engine.train()
    bad_in_a_row = 0
    last_save_step = counters["step"] if resume_from else None
    last_eval_step = counters["step"] if resume_from and counters["step"] >= max_steps else None  # a finished run, resumed
    progress = make_progress(tcfg, dist, max_steps, counters["step"])
    center = float(cfg.loss.center_coefficient)
    while counters["step"] < max_steps:
        started = time.perf_counter()
        drawn = stream.take(pairs_per_step)
        counters["step"] += 1
        step = counters["step"]
        # the plan needs only the length arrays; this rank then reads just its own pairs
        costs = np.array([tables[src].costs(layout)[row] for src, row in drawn], dtype=np.int64)
        widths = np.array([tables[src].width[row] for src, row in drawn], dtype=np.int64)
        mine = plan_micro_batches(costs, widths, capacity, world, layout)[dist.rank]
        needed = sorted({i for mb in mine for i in (mb or [0])})
        pairs = dict(zip(needed, fetch(tables, [drawn[i] for i in needed])))
        stats = torch.zeros(len(STATS), dtype=torch.float64, device=dist.device)
        counts = dict.fromkeys(COUNTS, 0)
        lr = engine.lr()
        for mb in mine:
            batch = collate([pairs[i] for i in (mb or [0])], layout, pad_id)
            rc, rr = forward(batch)
            margin = batch.margin.to(rc.device) if batch.margin is not None else None
            objective = bt_loss(rc, rr, margin, center)
            scale = 0.0 if mb is None else batch.n_pairs * world / pairs_per_step  # see the module docstring
            engine.backward(objective * scale)
            if mb is not None:
                stats += micro_batch_stats(rc.detach(), rr.detach(), objective.detach()).to(stats)
                for key, value in (("pairs", batch.n_pairs), ("real_tokens", batch.real_tokens),
                                   ("pad_tokens", batch.pad_tokens), ("processed_tokens", batch.total_tokens)):
                    counts[key] += value
        applied, grad_norm = engine.step()
        counts["stop"] = int(signals.received is not None)  # any rank signalled: all stop after this step
        sums = torch.cat([stats, torch.tensor([counts[k] for k in COUNTS], dtype=torch.float64, device=stats.device)])
        s = dict(zip(SUMS, distributed.all_reduce(sums, dist).tolist()))  # the step's one host sync
        stop = s["stop"] > 0
        elapsed = time.perf_counter() - started
        nonfinite = s["nonfinite"] > 0 or not math.isfinite(s["loss"])
        skipped = nonfinite or not applied
        counters["pairs_seen"] += len(drawn)
        counters["tokens_seen"] += int(s["real_tokens"])
        counters["skipped_steps"] += int(skipped)
        counters["nonfinite_losses"] += int(nonfinite)
        bad_in_a_row = bad_in_a_row + 1 if skipped else 0
        row = step_metrics(s, counters, grad_norm, lr, elapsed, skipped, stream.epochs_done())
        metrics.log(row)
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}", refresh=False)
        if dist.is_main and (step % int(tcfg.log_every) == 0 or step == max_steps or skipped):
            log.info("step %d/%d loss %.4f acc %.3f margin %.3f |g| %.3g lr %.3g %.0f tok/s pad %.1f%%%s", step, max_steps,
                     row["loss"], row["accuracy"], row["margin"], grad_norm, lr, row["tokens_per_s"],
                     100 * row["padding_fraction"], " SKIPPED (non-finite)" if skipped else "")
        if bad_in_a_row >= int(tcfg.max_bad_steps):
            path = save_checkpoint_now()  # the weights are the last good ones: skipped steps change nothing
            metrics.close()
            raise UserError(f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (steps {step - bad_in_a_row + 1}-"
                            f"{step}); stopped with the last good state saved in {path}; lower trainer.lr or inspect the data")
        if eval_rows and int(tcfg.eval_every) > 0 and (step % int(tcfg.eval_every) == 0 or step == max_steps):
            metrics.log({"step": step, "pairs_seen": counters["pairs_seen"], **evaluate()})
            last_eval_step = step
        if (int(tcfg.save_every) > 0 and step % int(tcfg.save_every) == 0) or step == max_steps or stop:
            save_checkpoint_now()
            last_save_step = step
        if stop:
            progress.close()
            metrics.close()
            log.warning("stopped by a preemption signal at step %d; the checkpoint is saved: rerun the same command "
                        "(trainer.resume=auto) to continue", step)
            return {**run_state(), "preempted": True}
    progress.close()

    # 6. the end: a last evaluation, a checkpoint, and the exported model
    if eval_rows and last_eval_step != counters["step"] and int(tcfg.eval_every) > 0:
        metrics.log({"step": counters["step"], "pairs_seen": counters["pairs_seen"], **evaluate()})
    if last_save_step != counters["step"]:
        save_checkpoint_now()
    final = checkpointing.export_final(out, export_to, run_state(), dist)
    log.info("exported %s (%d steps, %s pairs, %s tokens)", final, counters["step"], f"{counters['pairs_seen']:,}",
             f"{counters['tokens_seen']:,}")
    metrics.close()
    return run_state()


# ---------------------------------------------------------------------------------------------------------------- pieces
def validate(cfg: DictConfig) -> None:
    """Everything checkable before a process group or a model exists: one-line UserErrors naming the bad key."""
    tcfg, dcfg = cfg.trainer, cfg.data
    if not cfg.get("output_dir"):
        raise UserError("output_dir is not set")
    pair_data.sources(dcfg)  # data.path / data.mix exist and hold train shards
    if tcfg.precision not in PRECISIONS:
        raise UserError(f"trainer.precision={tcfg.precision!r} is not one of {PRECISIONS}")
    if dcfg.packing not in LAYOUTS:
        raise UserError(f"data.packing={dcfg.packing!r} is not one of {LAYOUTS}")
    if dcfg.attention not in ATTENTION:
        raise UserError(f"data.attention={dcfg.attention!r} is not one of {ATTENTION}")
    if str((cfg.get("wandb") or {}).get("mode", "disabled")) not in WANDB_MODES:
        raise UserError(f"wandb.mode={cfg.wandb.mode!r} is not one of {WANDB_MODES}")
    for key in ("pairs_per_step", "max_bad_steps", "log_every"):
        if int(tcfg[key]) < 1:
            raise UserError(f"trainer.{key}={tcfg[key]} must be >= 1")
    if tcfg.get("max_steps") is not None and int(tcfg.max_steps) < 0:
        raise UserError(f"trainer.max_steps={tcfg.max_steps} must be >= 0")
    if not float(tcfg.lr) > 0:
        raise UserError(f"trainer.lr={tcfg.lr} must be > 0")
    world = distributed.expected_world_size()
    if int(tcfg.pairs_per_step) < world:
        raise UserError(f"trainer.pairs_per_step={tcfg.pairs_per_step} is smaller than the {world} ranks of this job: "
                        "every rank needs at least one pair per step")
    max_length = int(cfg.model.max_length)
    need = 2 * max_length
    if int(dcfg.max_tokens_per_micro_batch) < need:
        raise UserError(f"data.max_tokens_per_micro_batch={dcfg.max_tokens_per_micro_batch} cannot hold one pair: two sequences of "
                        f"up to model.max_length={max_length} tokens need {need}; raise it or lower model.max_length")
    if cfg.get("deepspeed") is not None and tcfg.precision == "bf16" and not _bf16_supported():
        raise UserError("trainer.precision=bf16 but this machine has no bf16 support; use trainer.precision=fp32")


def _bf16_supported() -> bool:
    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True


def setup_logging(out: Path, dist: distributed.Dist) -> None:
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "datasets", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:
        pass
    from huggingface_hub.serialization import _torch as hub_torch

    logging.getLogger(hub_torch.__file__).setLevel(logging.WARNING)  # its logger is named by file path; one line per save
    for old in [h for h in log.handlers if getattr(h, "worldpm_run_log", False)]:  # an earlier run in this process
        log.removeHandler(old)
        old.close()
    if not dist.is_main:
        log.setLevel(logging.WARNING)
        return
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.worldpm_run_log = True
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_init_from(init_from) -> str | None:
    """`init_from`: a reward checkpoint directory, a run directory (its final/ or newest checkpoint), or a step checkpoint."""
    if not init_from:
        return None
    path = Path(str(init_from))
    candidates = [path, path / "hf", path / "final"]
    found = checkpointing.complete_checkpoints(path)
    if found:
        candidates.append(found[-1] / "hf")
    for c in candidates:
        if (c / "config.json").exists():
            return str(c)
    raise UserError(f"init_from={init_from} is not a reward checkpoint (no config.json in it, its hf/ or final/, or a checkpoint)")


def build_model(cfg: DictConfig, ds_config: dict | None, dist: distributed.Dist):
    """The RewardModel to train: pretrained / checkpoint weights or random init, a seeded fresh head, in the training dtype."""
    from worldpm.reward_model import build_reward_model, has_reward_head

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("train", None)
    model_cfg["seed"] = int(cfg.trainer.seed)
    # bf16 under DeepSpeed: load 16-bit weights (ZeRO keeps fp32 masters); PyTorch bf16 = fp32 weights under autocast
    model_cfg["dtype"] = "bfloat16" if (cfg.trainer.precision == "bf16" and ds_config is not None) else "float32"
    init_from = resolve_init_from(cfg.get("init_from"))
    if init_from and not has_reward_head(init_from):
        raise UserError(f"init_from={cfg.init_from} holds no reward head; to start from a pretrained language model use model.path")
    path = init_from or model_cfg.get("path")
    hf_ds_config = None
    if ds_config is not None and ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # transformers builds / loads the backbone partitioned (zero.Init)
    model = build_reward_model(model_cfg, path=path)
    fresh_head = not (path and has_reward_head(str(path)))
    if fresh_head:
        init_fresh_head(model, int(cfg.trainer.seed))
    if cfg.trainer.activation_checkpointing:
        model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    numel = lambda p: int(getattr(p, "ds_numel", p.numel()))  # noqa: E731 (ZeRO-3 parameters are partitioned)
    n_params = sum(numel(p) for p in model.parameters())
    embed = sum(numel(p) for p in model.model.get_input_embeddings().parameters())
    info = {"model_name": str(cfg.model.name), "n_params": n_params, "n_params_non_embedding": n_params - embed,
            "init": init_from or model_cfg.get("path") or "random", "fresh_head": fresh_head}
    return model, hf_ds_config, info


def init_fresh_head(model, seed: int) -> None:
    """Initialise a new reward head the same way on every rank and every ZeRO stage (a seed of its own, std = initializer_range).

    Under ZeRO-3 a head built inside zero.Init is partitioned: it is gathered, initialised on rank 0 and re-partitioned.
    """
    from worldpm.reward_model import init_head

    params = list(model.head.parameters())
    partitioned = any(hasattr(p, "ds_id") for p in params)
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        if partitioned:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    init_head(model.head, std)
        else:
            init_head(model.head, std)


def eval_subset(table, n: int) -> list[int]:
    """The held-out pairs evaluated along the run: a fixed sample (seed 0, the same for every run seed) of the test split."""
    if table is None or n <= 0:
        return []
    order = np.random.default_rng(0).permutation(len(table))
    return sorted(int(i) for i in order[:n])


def fetch(tables, drawn) -> list:
    """TokenizedPairs for (source, row) draws, reading each source once."""
    out = [None] * len(drawn)
    by_source: dict[int, list[int]] = {}
    for i, (src, _) in enumerate(drawn):
        by_source.setdefault(src, []).append(i)
    for src, idx in by_source.items():
        for i, pair in zip(idx, tables[src].pairs([drawn[i][1] for i in idx])):
            out[i] = pair
    return out


def micro_batch_stats(rc: torch.Tensor, rr: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    """A micro-batch's STATS as one float64 tensor on the rewards' device (no host sync). `loss` is the plain BT loss, the
    `objective` the loss trained on (with the margin and centring terms when set), summed over pairs."""
    rc, rr = rc.float(), rr.float()
    losses = bt_losses(rc, rr)
    n = rc.numel()
    finite = torch.isfinite(losses).all() & torch.isfinite(objective)
    values = {
        "loss": losses.sum(), "objective": objective.double() * n, "correct": (rc > rr).sum(), "rc": rc.sum(),
        "rc2": (rc * rc).sum(), "rr": rr.sum(), "rr2": (rr * rr).sum(), "margin": (rc - rr).sum(), "nonfinite": ~finite,
    }
    return torch.stack([values[k].double() for k in STATS])


def step_metrics(s: dict, counters: dict, grad_norm: float, lr: float, elapsed: float, skipped: bool, epoch: float) -> dict:
    n = max(s["pairs"], 1.0)
    std = lambda total, sq: math.sqrt(max(sq / n - (total / n) ** 2, 0.0))  # noqa: E731
    return {
        "step": counters["step"], "loss": s["loss"] / n, "objective": s["objective"] / n, "accuracy": s["correct"] / n,
        "reward_chosen_mean": s["rc"] / n, "reward_chosen_std": std(s["rc"], s["rc2"]),
        "reward_rejected_mean": s["rr"] / n, "reward_rejected_std": std(s["rr"], s["rr2"]), "margin": s["margin"] / n,
        "grad_norm": grad_norm, "lr": lr, "tokens": int(s["real_tokens"]), "processed_tokens": int(s["processed_tokens"]),
        "tokens_per_s": s["real_tokens"] / elapsed,
        "padding_fraction": s["pad_tokens"] / max(s["processed_tokens"], 1.0), "step_time_s": elapsed,
        "pairs_seen": counters["pairs_seen"], "tokens_seen": counters["tokens_seen"], "epoch": epoch,
        "skipped": skipped, "skipped_steps": counters["skipped_steps"], "nonfinite_losses": counters["nonfinite_losses"],
    }


def make_progress(tcfg, dist, total: int, initial: int):
    from tqdm import tqdm

    setting = str(tcfg.get("progress", "auto")).lower()
    if not dist.is_main or setting in ("false", "0", "off"):
        disable = True
    else:
        disable = None if setting == "auto" else False  # auto: a bar on a terminal, none in logs (tqdm's None)
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True)


main = hydra_entry("train")(run)

if __name__ == "__main__":
    # Run the copy imported under its real name: launchers that pickle the task (submitit) then find `run` by reference.
    from worldpm import train as _importable

    _importable.main()
