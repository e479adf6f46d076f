"""`lmforge train`: the one training loop, for one process or many (torchrun).

setup (process group, data, tokenizer, model, parallel strategy, optimizer, resume) -> for each
step: accumulate micro-batches (gradients synchronised on the last), clip, step -> log / eval /
checkpoint at intervals -> final checkpoint and loss plot. Rank 0 alone logs, prints and writes
the single-process checkpoint files; every rank writes its shard of the optimizer state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.config import RunConfig, dump_toml, to_dict
from lmforge.config_checks import check_run_config
from lmforge.errors import CheckpointError, ConfigError, TrainingError
from lmforge.models.counting import count_parameters, flops_per_token
from lmforge.models.moe import expert_load_metrics, moe_aux_loss, update_router_biases
from lmforge.models.transformer import Transformer
from lmforge.parallel.dist import (
    DistInfo,
    decided_by_main,
    elastic_restart_count,
    init_distributed,
    main_first,
    mean_over_ranks,
    shutdown,
    sum_over_ranks,
)
from lmforge.parallel.parallelize import (
    check_parallel_config,
    clip_gradients,
    needs_process_group,
    parallelize,
)
from lmforge.runtime import (
    autocast_context,
    choose_compile,
    choose_precision,
    choose_threads,
    enable_fast_math,
    format_flops,
    measure_peak_flops,
    peak_memory_bytes,
    synchronize,
)
from lmforge.tokenizer import Tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.early_stopping import EarlyStopping
from lmforge.train.health import (
    HEALTH_MESSAGES,
    OK,
    ROLLBACK,
    SPIKE,
    STOP,
    LossHealth,
    first_nonfinite_gradient,
)
from lmforge.train.metrics import MetricsLogger
from lmforge.train.objective import Objective, PretrainObjective
from lmforge.train.optim import build_optimizer, check_optimizer_config, lr_at, set_lr
from lmforge.train.plot import plot_run
from lmforge.train.run_checkpoint import (
    check_resumable,
    latest_intact_checkpoint,
    reload_weights,
    restore_sharded,
    rollback_checkpoint,
    save_run_checkpoint,
    step_checkpoints,
    weights_before_parallelize,
)
from lmforge.train.signals import StopSignals
from lmforge.train.time_budget import PROBE_STEPS, steps_within_budget


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    val_loss: float | None = None
    stopped_by: str | None = None
    """The signal (SIGTERM, SIGINT) that stopped the run early, after a checkpoint."""


def resolve_vocab(run: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    """Fill model.vocab_size from the tokenizer, or fail before training if it is too small."""
    vocab = run.model.vocab_size
    if vocab is None:
        vocab = 64 * math.ceil(tokenizer.vocab_size / 64)  # a multiple of 64 is faster to matmul
    elif vocab < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer.vocab_size} tokens; "
            f"set model.vocab_size >= {tokenizer.vocab_size} or leave it unset to follow the tokenizer"
        )
    return dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=vocab))


def accumulation_steps(run: RunConfig, seq_len: int, world_size: int = 1) -> int:
    per_step = run.train.micro_batch_size * seq_len * world_size
    if run.train.batch_tokens <= 0 or run.train.micro_batch_size <= 0:
        raise ConfigError("train.batch_tokens and train.micro_batch_size must be positive")
    if run.train.batch_tokens % per_step:
        raise ConfigError(
            f"train.batch_tokens={run.train.batch_tokens} is not a multiple of micro_batch_size x "
            f"seq_len x ranks = {per_step}; use e.g. batch_tokens={per_step * max(1, round(run.train.batch_tokens / per_step))}"
        )
    return run.train.batch_tokens // per_step


def train(
    run: RunConfig,
    resume: bool = False,
    init_from: str | None = None,
    objective: Objective | None = None,
    start_step: int | None = None,
    reset_optimizer: bool = False,
) -> TrainResult:
    """objective: what to train on and for (default: pretraining on run.data). start_step sets
    the step counter (schedule, end) of a resumed or new run; reset_optimizer resumes without the
    optimizer state."""
    if resume and init_from:
        raise ConfigError("--resume and --init_from exclude each other; use one")
    check_run_config(run)  # numbers, device, model shape, out_dir: before data preparation
    check_parallel_config(run.parallel, run.train.dtype)
    check_optimizer_config(run.optim, run.parallel.strategy)
    objective = objective or PretrainObjective()
    with StopSignals() as signals:
        info = init_distributed(
            run.train.device, run.parallel.backend, needs_process_group(run.parallel)
        )
        try:
            run = resolve_machine(run, info)
            return _train(
                run, info, resume, init_from, objective, start_step, reset_optimizer, signals
            )
        finally:
            shutdown(info)


def resolve_machine(run: RunConfig, info: DistInfo) -> RunConfig:
    """Threads and precision from this machine (rank 0 decides the dtype for every rank), logged
    as the run's first line; the resolved dtype is what config.toml records."""
    threads = choose_threads()
    precision = decided_by_main(info, lambda: choose_precision(run.train.dtype, info.device))
    check_parallel_config(run.parallel, precision.name)
    if info.is_main:
        tqdm.write(f"machine: {info.device} {precision.name} ({precision.reason}) | {threads}")
        if precision.warning:
            tqdm.write(f"warning: {precision.warning}")
    return dataclasses.replace(run, train=dataclasses.replace(run.train, dtype=precision.name))


def _train(
    run: RunConfig,
    info: DistInfo,
    resume: bool,
    init_from: str | None,
    objective: Objective,
    start_step: int | None,
    reset_optimizer: bool,
    signals: StopSignals,
) -> TrainResult:
    cfg = run.train
    out_dir = Path(cfg.out_dir)
    checkpoints = out_dir / "checkpoints"
    has_checkpoint = bool(checkpoints.is_dir() and step_checkpoints(checkpoints))
    if elastic_restart_count() > 0 and has_checkpoint:
        resume = True  # torchrun restarted the group after a failure: continue, don't restart
    if has_checkpoint and not resume:
        raise ConfigError(
            f"{out_dir} already holds checkpoints; pass --resume to continue it, "
            "or choose a new --train.out_dir"
        )
    device = info.device
    enable_fast_math(device)
    autocast = autocast_context(device, cfg.dtype)
    torch.manual_seed(cfg.seed)

    progress = run.logging.progress_bar and info.is_main
    tokenizer = objective.prepare(run, info, progress)
    run = resolve_vocab(run, tokenizer)
    run.model.validate()
    seq_len = cfg.seq_len or run.model.context_length
    if seq_len > run.model.context_length:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds model.context_length={run.model.context_length}; "
            "lower the first or raise the second"
        )
    accumulation = accumulation_steps(run, seq_len, info.world_size)

    state, last = None, None
    if resume:
        if not has_checkpoint:
            raise CheckpointError(f"--resume: {out_dir} has no checkpoints; start without --resume")
        warn = tqdm.write if info.is_main else (lambda message: None)
        last = decided_by_main(info, lambda: latest_intact_checkpoint(checkpoints, warn))
        state = check_resumable(run, last, reset_optimizer)

    model = Transformer(run.model).to(device)
    if init_from:
        source = ckpt.find_checkpoint(init_from)
        ckpt.verify_checkpoint(source, required=False)  # a corrupt checkpoint is refused whole
        ckpt.read_model_config(source)
        ckpt.load_weights(model, source)
    objective.transform(model)  # e.g. finetuning's starting weights and LoRA adapters
    if last is not None:
        weights_before_parallelize(model, last, whole_file=reset_optimizer)
    flops_token = flops_per_token(model, seq_len)
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else None
    if peak is None:
        peak = decided_by_main(info, lambda: measure_peak_flops(device, cfg.dtype))
    first_step = start_step if start_step is not None else state["step"] if state else 0
    run_flops = flops_token * cfg.batch_tokens * max(cfg.max_steps - first_step, 0)
    compile_model, compile_reason = decided_by_main(
        info,
        lambda: choose_compile(
            cfg.compile, device, run_flops / info.world_size, peak, cfg.time_budget
        ),
    )
    parallel = parallelize(model, run.parallel, info, cfg.dtype, compile_model)
    optimizer = build_optimizer(
        model, run.optim, device, shard_over_ranks=run.parallel.strategy == "zero1"
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    train_loader, val_loader = objective.loaders(run, info, seq_len, device)
    hellaswag = None
    if cfg.hellaswag_interval > 0:  # read (or download) it now: a bad file fails before training
        from lmforge.evals.hellaswag import load_hellaswag

        hellaswag = main_first(
            info, lambda: load_hellaswag(cfg.hellaswag_data, cfg.hellaswag_limit)
        )

    health = LossHealth(run.health)
    early_stopping = EarlyStopping(cfg.early_stopping_patience)

    def restore(directory: Path, state: dict, optimizer_too: bool = True) -> tuple:
        """Optimizer, loader, RNG (and FSDP's model) from a checkpoint; returns the counters."""
        if optimizer_too:
            restore_sharded(directory, model, optimizer, info)
            scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        counters = ("step", "best_val_loss", "tokens_seen", "lr_scale")
        return tuple(state[key] for key in counters)

    step, best_val, tokens_seen, lr_scale = 0, float("inf"), 0, 1.0
    if state is not None:
        step, best_val, tokens_seen, lr_scale = restore(last, state, not reset_optimizer)
        health.load_state_dict(state["health"])
        if "early_stopping" in state:
            early_stopping.load_state_dict(state["early_stopping"])
    if start_step is not None:
        step = start_step

    logger = None
    if info.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        dump_toml(run, out_dir / "config.toml")
        logger = MetricsLogger(out_dir, run.logging, run)
    max_norm = run.optim.grad_clip if run.optim.grad_clip > 0 else float("inf")
    say = tqdm.write if info.is_main else (lambda message: None)
    say(
        f"model: {count_parameters(model) / 1e6:.2f}M parameters, {flops_token / 1e6:.1f} MFLOPs/token | "
        f"{device} {cfg.dtype} | batch {cfg.batch_tokens} tokens = {cfg.micro_batch_size} x {seq_len} "
        f"x {info.world_size} ranks x {accumulation} accumulation | {run.parallel.strategy} | "
        f"peak {format_flops(peak)} ({'given' if cfg.peak_tflops else 'measured'}) | {compile_reason}"
    )
    if state is not None:
        say(f"resumed from {last} at step {step} ({info.world_size} ranks)")

    def save(is_best: bool) -> None:
        summary = {"step": step, "tokens_seen": tokens_seen, "val_loss": last_val}
        train_state = {
            "scaler": scaler.state_dict(),
            "loader": train_loader.state_dict(),
            "rng": {"torch": torch.get_rng_state()}
            | ({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "step": step,
            "best_val_loss": best_val,
            "tokens_seen": tokens_seen,
            "lr_scale": lr_scale,
            "health": health.state_dict(),
            "early_stopping": early_stopping.state_dict(),
            "world_size": info.world_size,
            "budgeted_max_steps": None if budget_pending else cfg.max_steps,
            "run_config": to_dict(run),
        }
        save_run_checkpoint(
            checkpoints,
            step,
            parallel,
            optimizer,
            tokenizer,
            run,
            info,
            summary,
            train_state,
            is_best,
            write_weights=objective.write_weights,
        )

    def run_evaluation() -> float:
        metrics = objective.evaluate(parallel.forward, val_loader, cfg.eval_batches, autocast, info)
        parallel.reshard()
        if logger is not None:
            logger.log(step, metrics)
        extra = "".join(f" | {k} {v:.4f}" for k, v in metrics.items() if k != "val_loss")
        say(f"step {step:>6}/{cfg.max_steps} | val loss {metrics['val_loss']:.4f}{extra}")
        return metrics["val_loss"]

    result = TrainResult(out_dir, step)
    last_val = None
    bar = tqdm(
        total=cfg.max_steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True
    )
    window_start, window_tokens, paused = time.perf_counter(), 0, 0.0
    loss_sum = torch.zeros((), device=device)
    if cfg.eval_at_start and step == 0:
        last_val = run_evaluation()
        early_stopping.update(last_val)
    model.train()
    signals.training = True
    started_at, train_start, probe_start = step, time.perf_counter(), 0.0
    budget_pending = cfg.time_budget is not None
    if budget_pending and state is not None and state.get("budgeted_max_steps"):
        cfg.max_steps, budget_pending = state["budgeted_max_steps"], False  # decided before
    while step < cfg.max_steps:
        lr = lr_scale * lr_at(step, cfg.max_steps, run.optim)
        set_lr(optimizer, lr)
        step_loss = torch.zeros((), device=device)
        for micro in range(accumulation):
            batch = train_loader.batch_at(0) if cfg.overfit_one_batch else train_loader.next()
            with parallel.gradient_sync(micro == accumulation - 1):
                loss = objective.loss(parallel.forward, batch, autocast)
                balance = moe_aux_loss(model)  # MoE load-balancing loss (already weighted)
                minimised = loss if balance is None else loss + balance
                scaler.scale(minimised / accumulation).backward()
            step_loss += loss.detach() / accumulation
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(model, max_norm)
        # One collective a step: the loss summed over ranks, and whether any rank was signalled.
        signalled = torch.tensor(float(signals.received is not None), device=device)
        status = sum_over_ranks(torch.stack([step_loss.float(), signalled]), info).tolist()
        step_mean_loss, stop_requested = status[0] / info.world_size, status[1] > 0
        # fp16's GradScaler handles overflowing gradients itself (it skips and rescales).
        verdict = health.assess(step_mean_loss, 0.0 if scaler.is_enabled() else grad_norm.item())
        if verdict in (OK, SPIKE):
            scaler.step(optimizer)
            scaler.update()
            update_router_biases(model)  # auxiliary-loss-free MoE balancing (no-op otherwise)
        if verdict != OK:
            say(
                f"step {step + 1:>6}/{cfg.max_steps} | loss {step_mean_loss:.4g} | grad "
                f"{grad_norm.item():.4g} | {HEALTH_MESSAGES[verdict]} ({health.metrics()})"
            )
        if verdict == STOP:
            raise TrainingError(health.report(step + 1, first_nonfinite_gradient(model), lr))
        optimizer.zero_grad(set_to_none=True)
        if verdict == ROLLBACK:
            directory = decided_by_main(
                info, functools.partial(rollback_checkpoint, checkpoints, step + 1, say)
            )
            step, best_val, tokens_seen, _ = restore(directory, ckpt.load_train_state(directory))
            reload_weights(model, directory)
            health.rolled_back()
            lr_scale *= run.health.rollback_lr_factor
            say(f"rolled back to {directory.name}; learning rate now x{lr_scale:g}")
            loss_sum.zero_()
            window_start, window_tokens, paused = time.perf_counter(), 0, 0.0
            bar.reset(total=cfg.max_steps)
            bar.update(step)
            continue
        loss_sum += step_loss
        step += 1
        tokens_seen += cfg.batch_tokens
        window_tokens += cfg.batch_tokens
        bar.update(1)
        if step == started_at + EARLY_REPORT_STEPS and step % cfg.log_interval:
            say(early_report(step, cfg, window_tokens, time.perf_counter() - window_start - paused))
        if budget_pending and step == started_at + 1:
            probe_start = time.perf_counter()
        elif budget_pending and step == started_at + 1 + PROBE_STEPS:
            now = time.perf_counter()
            pace = (now - probe_start) / PROBE_STEPS
            fit = functools.partial(
                steps_within_budget, cfg, step, pace, now - train_start, accumulation
            )
            budgeted = decided_by_main(info, fit)  # rank 0's clock decides for every rank
            say(
                f"time_budget {cfg.time_budget:g} s at {pace:.2f} s/step: max_steps "
                f"{cfg.max_steps} -> {budgeted} (recorded in config.toml and checkpoints)"
            )
            cfg.max_steps, budget_pending = budgeted, False
            bar.total = cfg.max_steps
            if info.is_main:
                dump_toml(run, out_dir / "config.toml")

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            synchronize(device)
            elapsed = time.perf_counter() - window_start - paused
            steps_in_window = window_tokens // cfg.batch_tokens
            mean_loss = mean_over_ranks(loss_sum / steps_in_window, info).item()
            tokens_per_s = window_tokens / elapsed
            mfu = flops_token * tokens_per_s / (peak * info.world_size)  # peak is per device
            if mfu > 1:  # a peak measured too low (e.g. a throttled host): no number beats none
                mfu = float("nan")
            metrics = (
                {
                    "loss": mean_loss,
                    "lr": lr,
                    "grad_norm": grad_norm.item(),
                    "tokens_per_s": tokens_per_s,
                    "mfu": mfu,
                    "tokens": tokens_seen,
                    "peak_memory_gib": peak_memory_bytes(device) / 2**30,
                }
                | health.metrics()
                | expert_load_metrics(model)
                | objective.train_metrics(info)
            )
            result.losses[step] = mean_loss
            if logger is not None:
                logger.log(step, metrics)
            say(
                f"step {step:>6}/{cfg.max_steps} | loss {mean_loss:.4f} | lr {lr:.2e} | "
                f"grad {metrics['grad_norm']:.3f} | {tokens_per_s:,.0f} tok/s | MFU {100 * mfu:.1f}%"
                + (" (above the measured peak: set train.peak_tflops)" if math.isnan(mfu) else "")
            )
            if not math.isfinite(mean_loss):
                say("loss is not finite: lower optim.lr, or use train.dtype='fp32' to debug")
            window_start, window_tokens, paused = time.perf_counter(), 0, 0.0
            loss_sum.zero_()

        is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
        is_checkpoint = step % cfg.checkpoint_interval == 0 or step == cfg.max_steps
        pause_start = time.perf_counter()  # eval and saving are not charged to throughput
        stop_early = False
        if is_eval:
            last_val = run_evaluation()
            stop_early = early_stopping.update(last_val)
            if stop_early:
                say(f"early stop: no better val loss in {cfg.early_stopping_patience} evaluations")
                is_checkpoint = True
        if hellaswag and (step % cfg.hellaswag_interval == 0 or step == cfg.max_steps):
            run_hellaswag(model, tokenizer, hellaswag, cfg, info, parallel.fsdp, logger, step, say)
            parallel.reshard()
        if is_checkpoint:
            is_best = last_val is not None and last_val < best_val
            best_val = min(best_val, last_val) if last_val is not None else best_val
            save(is_best)
        paused += time.perf_counter() - pause_start
        if stop_requested:
            if not is_checkpoint:
                save(is_best=False)
            result.stopped_by = signals.received or "a signal on another rank"
            break
        if stop_early:
            break

    bar.close()
    if logger is not None:
        logger.close()
        plot_run(out_dir)
    result.step, result.val_loss = step, last_val
    return result


EARLY_REPORT_STEPS = 3
"""Throughput and an ETA after this many steps, long before the first log_interval on a slow CPU."""


def early_report(step: int, cfg, tokens: int, seconds: float) -> str:
    rate = tokens / max(seconds, 1e-9)
    left = (cfg.max_steps - step) * cfg.batch_tokens / rate
    return (
        f"step {step:>6}/{cfg.max_steps} | {rate:,.0f} tok/s over the first steps | "
        f"ETA {int(left // 60)} min {int(left % 60)} s"
    )


def run_hellaswag(model, tokenizer, examples, cfg, info, sharded, logger, step, say) -> None:
    """HellaSwag on rank 0 (on every rank with FSDP, whose forward is collective)."""
    if not (info.is_main or sharded):
        return
    from lmforge.evals.hellaswag import evaluate_hellaswag

    # The uncompiled model: every batch has a new shape, which would recompile.
    scores = evaluate_hellaswag(
        model, tokenizer, examples, cfg.micro_batch_size, info.device, cfg.dtype, progress=False
    )
    if logger is not None:
        logger.log(step, {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"]})
    say(
        f"step {step:>6}/{cfg.max_steps} | hellaswag acc {scores['acc']:.4f} "
        f"acc_norm {scores['acc_norm']:.4f} ({scores['n']} examples)"
    )
