"""`worldpm train` / `python -m worldpm.train`: Bradley-Terry reward-model training, the loop read top to bottom.

Supports: one process (`deepspeed=null`: plain PyTorch, for debugging and small models) or every rank of a DeepSpeed ZeRO-1/2/3
job (+ CPU offload) started by torchrun, `deepspeed --no_local_rank`, SLURM srun or Hydra's submitit launcher, on one node or
many, with the model's recommended ZeRO config by default (`deepspeed=auto`: model.train.deepspeed); fp32 or bf16; activation
checkpointing; padding-free packing (`data.packing`); pairs or whole forum threads (`data.unit`) with the pair or a listwise
objective (`loss.objective`); several datasets mixed by weight (`data.mix`); a margin column; LoRA; exact resume (engine
state, data position, RNG), also on another number of ranks (universal checkpoint); preemption and time limits
(SIGTERM/SIGUSR1/SIGUSR2 -> checkpoint, then the launcher's own handler, e.g. submitit's requeue).
Assumes: `data.path` is a `worldpm collect` output (PairRecord shards, and ThreadRecord shards for threads); the model is a
`model=` config (a pretrained backbone, a reward checkpoint through `init_from`, or a random init such as model=tiny).

    check the config, join the job           prepare.validate (deepspeed=auto resolved), train.distributed
    build the reward model                   prepare.build_model (ZeRO-3: partitioned as it is built)
    tokenise the pairs or threads, cached    data.pairs, data.threads (the model's encoder; rank 0 first, the others read its cache)
    build the engine                         train.engine (DeepSpeed ZeRO 1/2/3 or PyTorch; AdamW, warmup + schedule)
    resume from the newest checkpoint        train.checkpointing (another rank count: train.engine's universal checkpoint)
    each step: draw pairs (or threads), plan this rank's share, forward + loss + backward, optimizer step, metrics, eval, save
    export output_dir/final/ (checkpoint contract)

Loss scaling: a step's gradient is that of the weighted mean loss over its terms (the sampled pairs for `pairs`; worldpm.data.
threads for listwise), whose total weight W_step is known on every rank from the draws. A micro-batch contributes its
weighted loss sum (train.loss) times R / W_step; DeepSpeed averages gradients over the R data-parallel ranks, so the sum over
all micro-batches and ranks is exactly the weighted mean, whatever the number of micro-batches or ranks (tested: ZeRO-1/2 on
2 ranks match one process to 1e-5). A thread too long for one micro-batch is split into parts whose rewards are first computed
without gradient, so each part's loss sees the whole thread (data.packing).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from worldpm.data.packing import MicroBatch, StepPlan, model_inputs, rank_micro_batches, use_attention
from worldpm.data.pairs import load_tables
from worldpm.data.stream import PairStream, sources
from worldpm.errors import UserError
from worldpm.data.threads import Objective
from worldpm.model.bt_loss import bt_losses
from worldpm.model.chat_format import PAD_TOKEN
from worldpm.train import checkpointing, distributed
from worldpm.train.checkpointing import ExportMeta, PreemptionSignals
from worldpm.train.engine import deepspeed_config, make_engine
from worldpm.train.metrics import COUNTS, STATS, SUMS, MetricsLog, micro_batch_stats, step_metrics
from worldpm.train.loss import batch_loss, sampled_pairs
from worldpm.train.prepare import (build_model, data_unit, eval_subset, make_progress, objective_of, seed_everything,
                                   setup_logging, validate)

log = logging.getLogger("worldpm.train")


def run(cfg: DictConfig) -> dict:
    cfg, engine_choice = validate(cfg)  # typed; deepspeed=auto has become the model's recommended ZeRO config
    dist = distributed.init(use_deepspeed=cfg.get("deepspeed") is not None, shm_comm=bool(cfg.trainer.shm_comm))
    signals = PreemptionSignals()
    try:
        result = train(cfg, dist, signals, engine_choice)
    finally:
        signals.restore()
    signals.forward()  # a preempted run has saved its checkpoint; now e.g. submitit may requeue the job
    return result


def train(cfg: DictConfig, dist: distributed.Dist, signals: PreemptionSignals, engine_choice: str) -> dict:
    tcfg, dcfg, out = cfg.trainer, cfg.data, Path(cfg.output_dir)
    setup_logging(out, dist)
    seed = int(tcfg.seed)
    seed_everything(seed)
    ds_config = None if cfg.get("deepspeed") is None else deepspeed_config(OmegaConf.to_container(cfg.deepspeed, resolve=True), tcfg)

    # 1. the model (ZeRO-3: transformers builds it partitioned while hf_ds_config is referenced)
    model, hf_ds_config, info, lora = build_model(cfg, ds_config)
    compute_dtype = torch.bfloat16 if tcfg.precision == "bf16" else torch.float32
    batching = Batching(str(dcfg.packing), str(dcfg.attention),
                        use_attention(model, str(dcfg.attention), str(dcfg.packing), compute_dtype),
                        int(dcfg.max_tokens_per_micro_batch), compute_dtype,
                        model.tokenizer.convert_tokens_to_ids(PAD_TOKEN), dist.rank, dist.world_size, dist.device,
                        objective_of(cfg))
    export = ExportMeta(model.config, model.tokenizer, model.spec, lora)
    log.info("model %s: %s parameters (%s non-embedding), head %s, attention %s, %s%s; from %s; %s on %d ranks",
             info["model_name"], f"{info['n_params']:,}", f"{info['n_params_non_embedding']:,}", model.spec.head,
             batching.attn_implementation, tcfg.precision, ", activation checkpointing" if tcfg.activation_checkpointing else "",
             info["init"], engine_choice, dist.world_size)
    if lora is not None:
        log.info("LoRA r=%d alpha=%g on %s%s: %s trainable parameters (%s in adapters, the rest the reward head); exports merge "
                 "the adapters", lora.settings.r, lora.settings.alpha, ",".join(lora.settings.target_modules),
                 f", backbone quantised {lora.settings.quantize}" if lora.settings.quantize else "",
                 f"{info['trainable_params']:,}", f"{info['adapter_params']:,}")

    # 2. the data (pairs, or whole threads), tokenised once with the model's encoder (rank 0 first; the others read its cache)
    unit = data_unit(cfg)
    data = sources(dcfg, unit)
    tables, eval_table = distributed.main_first(dist, partial(load_tables, [s.path for s in data], model.encoder, int(dcfg.num_proc),
                                                              dcfg.get("cache_dir"), cfg.loss.get("margin_column"), unit))
    n_train, pairs_per_step = int(sum(t.n_pairs.sum() for t in tables)), int(tcfg.pairs_per_step)
    max_steps = int(tcfg.max_steps) if tcfg.get("max_steps") is not None else max(1, int(float(tcfg.epochs) * n_train // pairs_per_step))
    eval_draws = [(0, row) for row in eval_subset(eval_table, int(dcfg.eval_pairs))]
    log.info("data: %s train pairs%s from %s; %d held-out %s; %d steps x %d pairs (%.2f epochs); objective %s", f"{n_train:,}",
             f" in {sum(len(t) for t in tables):,} threads" if unit == "threads" else "",
             ", ".join(f"{s.name}={len(t):,} (weight {s.weight:g})" for s, t in zip(data, tables)), len(eval_draws), unit,
             max_steps, pairs_per_step, max_steps * pairs_per_step / n_train, batching.objective)

    # 3. the engine: DeepSpeed ZeRO, or PyTorch for deepspeed=null; it owns the model from here on
    engine = make_engine(model, ds_config, tcfg, max_steps, dist, hf_ds_config)
    del model

    # 4. resume: engine state, data position, RNG, counters
    stream = PairStream([len(t) for t in tables], [s.weight for s in data], seed,
                        [t.n_pairs for t in tables] if unit == "threads" else None)
    counters = {"step": 0, "pairs_seen": 0, "tokens_seen": 0, "skipped_steps": 0, "nonfinite_losses": 0}
    run_info = {**info, "seed": seed, "data_path": str(data[0].path), "world_size": dist.world_size, "zero_stage": engine.stage,
                "max_steps": max_steps, "pairs_per_step": pairs_per_step}
    resume_from = checkpointing.resolve_resume(out, tcfg.resume)
    if resume_from is not None:
        state, data_state = checkpointing.load(engine, resume_from, dist)
        if state.get("model_name") != info["model_name"]:
            raise UserError(f"{resume_from} is a checkpoint of model {state.get('model_name')!r}, not {info['model_name']!r}")
        stream.load_state_dict(data_state["stream"])
        counters.update(data_state["counters"])
        log.info("resumed from %s (step %d, %s pairs seen)", resume_from, counters["step"], f"{counters['pairs_seen']:,}")
    metrics = MetricsLog(out, dist.is_main, counters["step"], cfg.get("wandb"), OmegaConf.to_container(cfg, resolve=True))
    if dist.is_main:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    saving = Saving(out, run_info, export if tcfg.save_hf else None, int(tcfg.keep_last), bool(tcfg.keep_series))
    eval_plan = batching.plan([eval_table], eval_draws) if eval_draws and int(tcfg.eval_every) > 0 else None

    # 5. the loop
    engine.train()
    bad_in_a_row = 0
    last_save = counters["step"] if resume_from else None
    last_eval = counters["step"] if resume_from and counters["step"] >= max_steps else None  # a finished run, resumed
    progress = make_progress(tcfg, dist, max_steps, counters["step"])
    while counters["step"] < max_steps:
        started = time.perf_counter()
        drawn = stream.take(pairs_per_step)  # the step's global pairs (or threads holding them): the same on every rank
        plan = batching.plan(tables, drawn)  # this rank's share in token-budget micro-batches (only its rows are read)
        lr = engine.lr()
        stats, counts = train_step(engine, plan, batching, float(cfg.loss.center_coefficient))
        applied, grad_norm = engine.step()  # the update; skipped when the gradient is not finite
        counts["stop"] = int(bool(signals.received))  # any rank signalled: all stop after this step
        s = reduce_step(stats, counts, dist)  # the step's one host sync
        step = counters["step"] = counters["step"] + 1
        nonfinite = s["nonfinite"] > 0 or not math.isfinite(s["loss"])
        skipped = nonfinite or not applied
        for key, value in (("pairs_seen", plan.pairs), ("tokens_seen", int(s["real_tokens"])), ("skipped_steps", int(skipped)),
                           ("nonfinite_losses", int(nonfinite))):
            counters[key] += value
        bad_in_a_row = bad_in_a_row + 1 if skipped else 0
        row = step_metrics(s, counters, grad_norm, lr, time.perf_counter() - started, skipped, stream.epochs_done())
        metrics.log(row)  # metrics.jsonl (+ wandb), the progress bar and every log_every steps a log line
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}", refresh=False)
        if dist.is_main and (step % int(tcfg.log_every) == 0 or step == max_steps or skipped):
            log.info("step %d/%d loss %.4f acc %.3f margin %.3f |g| %.3g lr %.3g %.0f tok/s pad %.1f%%%s", step, max_steps,
                     row["loss"], row["accuracy"], row["margin"], grad_norm, lr, row["tokens_per_s"],
                     100 * row["padding_fraction"], " SKIPPED (non-finite)" if skipped else "")
        if bad_in_a_row >= int(tcfg.max_bad_steps):  # the weights are the last good ones: skipped steps change nothing
            path = saving.save(engine, counters, stream, dist)
            metrics.close()
            raise UserError(f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (steps {step - bad_in_a_row + 1}-"
                            f"{step}); stopped with the last good state saved in {path}; lower trainer.lr or inspect the data")
        if eval_plan and (step % int(tcfg.eval_every) == 0 or step == max_steps):  # held-out BT loss and accuracy
            metrics.log({"step": step, "pairs_seen": counters["pairs_seen"], **evaluate(engine, eval_plan, batching, dist)})
            last_eval = step
        if (int(tcfg.save_every) > 0 and step % int(tcfg.save_every) == 0) or step == max_steps or s["stop"] > 0:
            saving.save(engine, counters, stream, dist)
            last_save = step
        if s["stop"] > 0:  # preempted: the checkpoint is saved, the launcher may requeue the job
            progress.close()
            metrics.close()
            log.warning("stopped by a preemption signal at step %d; the checkpoint is saved: rerun the same command "
                        "(trainer.resume=auto) to continue", step)
            return {**counters, **run_info, "preempted": True}
    progress.close()

    # 6. the end: a last evaluation, a checkpoint, and the exported model
    if eval_plan and last_eval != counters["step"]:
        metrics.log({"step": counters["step"], "pairs_seen": counters["pairs_seen"], **evaluate(engine, eval_plan, batching, dist)})
    if last_save != counters["step"]:
        saving.save(engine, counters, stream, dist)
    final = checkpointing.export_final(engine, out, export, {**counters, **run_info}, dist)
    log.info("exported %s (%d steps, %s pairs, %s tokens)", final, counters["step"], f"{counters['pairs_seen']:,}",
             f"{counters['tokens_seen']:,}")
    metrics.close()
    return {**counters, **run_info}


# ---------------------------------------------------------------------------------------------------------------- the step
@dataclass(frozen=True)
class Batching:
    """How this rank lays out micro-batches (`data.packing`, the token budget), feeds them to the model (`data.attention`,
    the backbone's attention implementation, the compute dtype, the device) and what the loss reads (`loss.objective`)."""

    layout: str
    attention: str
    attn_implementation: str
    capacity: int
    dtype: torch.dtype
    pad_id: int
    rank: int
    world: int
    device: torch.device
    objective: Objective

    def plan(self, tables, draws) -> StepPlan:
        return rank_micro_batches(tables, draws, self.capacity, self.world, self.rank, self.layout, self.pad_id, self.objective)

    def forward(self, engine, batch: MicroBatch) -> torch.Tensor:
        return engine.forward(**model_inputs(batch, self.attention, self.attn_implementation, self.dtype, self.device))

    def rewards(self, engine, batch: MicroBatch, fixed: dict) -> torch.Tensor:
        """A micro-batch's rewards, then the `fixed` ones of the other parts of its split threads (MicroBatch.external)."""
        r = self.forward(engine, batch)
        return torch.cat([r, torch.stack([fixed[k] for k in batch.external]).to(r)]) if batch.external else r

    def prepass(self, engine, plan: StepPlan) -> dict:
        """The rewards of split threads' parts, without gradient, by (thread, answer); every rank makes as many forwards
        (plan.prepass_slots: ZeRO-3's forwards are collective)."""
        fixed = {}
        with torch.no_grad():
            for k in plan.prepass:
                batch = plan.batches[k][1]
                fixed.update(zip(batch.keys, self.forward(engine, batch)))
            for _ in range(plan.prepass_slots - len(plan.prepass)):
                self.forward(engine, plan.batches[0][1])
        return fixed


def train_step(engine, plan: StepPlan, batching: Batching, center: float) -> tuple[torch.Tensor, dict]:
    """Forward, loss and backward of this rank's micro-batches; the step's STATS (summed on the device) and COUNTS."""
    stats = torch.zeros(len(STATS), dtype=torch.float64, device=batching.device)
    counts = dict.fromkeys(COUNTS, 0)
    fixed = batching.prepass(engine, plan)
    counts["processed_tokens"] += sum(plan.batches[k][1].total_tokens for k in plan.prepass)  # forwarded twice
    for real, batch in plan.batches:
        rewards = batching.rewards(engine, batch, fixed)
        loss, counted = batch_loss(rewards, batch, batching.objective, center)
        engine.backward(loss * (batching.world / plan.weight if real else 0.0))  # module docstring
        if real:
            rc, rr = sampled_pairs(rewards.detach(), batch)
            stats += micro_batch_stats(rc, rr, counted.detach() * (plan.pairs / plan.weight)).to(stats)
            for key, value in (("pairs", batch.n_pairs), ("terms", batch.n_terms), ("real_tokens", batch.real_tokens),
                               ("pad_tokens", batch.pad_tokens), ("processed_tokens", batch.total_tokens)):
                counts[key] += value
    return stats, counts


def reduce_step(stats: torch.Tensor, counts: dict, dist: distributed.Dist) -> dict:
    """The step's sums over all ranks, as floats by name (SUMS): one all_reduce, one host sync."""
    counted = torch.tensor([counts[k] for k in COUNTS], dtype=torch.float64, device=stats.device)
    return dict(zip(SUMS, distributed.all_reduce(torch.cat([stats, counted]), dist).tolist()))


def evaluate(engine, plan: StepPlan, batching: Batching, dist: distributed.Dist) -> dict:
    """Held-out BT loss and accuracy on the sampled pairs; every rank takes part (ZeRO-3 forwards are collective)."""
    sums = torch.zeros(2, dtype=torch.float64, device=dist.device)  # loss, correct: on the device until the reduce
    n = 0
    engine.eval()
    with torch.no_grad():
        fixed = batching.prepass(engine, plan)
        for real, batch in plan.batches:
            rc, rr = sampled_pairs(batching.rewards(engine, batch, fixed), batch)
            if real:
                sums += torch.stack([bt_losses(rc, rr).sum().double(), (rc > rr).sum().double()]).to(sums)
                n += batch.n_pairs
    engine.train()
    sums = distributed.all_reduce(torch.cat([sums, torch.tensor([n], dtype=torch.float64, device=sums.device)]), dist)
    loss, correct, n = sums.tolist()
    return {"eval/loss": loss / n, "eval/accuracy": correct / n, "eval/n": int(n)}


@dataclass(frozen=True)
class Saving:
    """Where and how checkpoints are saved: the run directory, what state.json records, the hf/ export, what is kept."""

    output_dir: Path
    run_info: dict
    export: ExportMeta | None
    keep_last: int
    keep_series: bool

    def save(self, engine, counters: dict, stream: PairStream, dist: distributed.Dist) -> Path:
        """A resumable checkpoint of the step just done (collective: every rank calls it)."""
        path = checkpointing.save(engine, self.output_dir, counters["step"], {**counters, **self.run_info},
                                  {"stream": stream.state_dict(), "counters": counters}, dist, self.export, self.keep_last,
                                  self.keep_series)
        log.info("saved %s", path)
        return path
