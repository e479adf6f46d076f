"""`lmforge train`: the one training loop.

setup (data, tokenizer, model, optimizer, resume) -> for each step: accumulate micro-batches,
clip, step -> log / eval / checkpoint at intervals -> final checkpoint and loss plot.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lmforge.config import RunConfig, dump_toml, to_dict
from lmforge.data.loader import BatchLoader
from lmforge.data.prepare import prepare
from lmforge.errors import CheckpointError, ConfigError
from lmforge.evals.loss import batch_loss, mean_loss
from lmforge.models.counting import count_parameters, flops_per_token
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.metrics import MetricsLogger
from lmforge.train.optim import build_optimizer, lr_at
from lmforge.train.plot import plot_run
from lmforge.train.runtime import (
    autocast_context,
    enable_fast_math,
    measure_peak_flops,
    pick_device,
    synchronize,
)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    val_loss: float | None = None


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


def check_resumable(run: RunConfig, directory: Path) -> dict:
    state = ckpt.load_train_state(directory)
    saved = ckpt.read_model_config(directory).shape_dict()
    current = run.model.shape_dict()
    changed = {k: (saved[k], current.get(k)) for k in saved if saved[k] != current.get(k)}
    if changed:
        key, (old, new) = next(iter(changed.items()))
        raise ConfigError(
            f"--resume with a config that changes the model's shape (model.{key}: {old} -> {new}); "
            "resume with the original config, or start a new run in another train.out_dir"
        )
    return state


def evaluate(model: nn.Module, loader: BatchLoader, batches: int, autocast) -> float:
    """Mean loss over the same `batches` val batches every time (they depend only on the seed)."""
    return mean_loss(model, loader, batches, autocast)


def train(run: RunConfig, resume: bool = False, init_from: str | None = None) -> TrainResult:
    cfg = run.train
    out_dir = Path(cfg.out_dir)
    checkpoints = out_dir / "checkpoints"
    if checkpoints.exists() and any(checkpoints.iterdir()) and not resume:
        raise ConfigError(
            f"{out_dir} already holds checkpoints; pass --resume to continue it, "
            "or choose a new --train.out_dir"
        )
    if resume and init_from:
        raise ConfigError("--resume and --init_from exclude each other; use one")
    if cfg.max_steps <= 0:
        raise ConfigError(f"train.max_steps must be positive, got {cfg.max_steps}")

    run.model.validate()  # shape errors before the (possibly long) data preparation
    device = pick_device(cfg.device)
    enable_fast_math(device)
    autocast = autocast_context(device, cfg.dtype)
    torch.manual_seed(cfg.seed)

    data_dir = prepare(run.data, progress=run.logging.progress_bar)
    tokenizer = load_tokenizer(data_dir)
    run = resolve_vocab(run, tokenizer)
    run.model.validate()
    seq_len = cfg.seq_len or run.model.context_length
    if seq_len > run.model.context_length:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds model.context_length={run.model.context_length}; "
            "lower the first or raise the second"
        )
    accumulation = accumulation_steps(run, seq_len)

    state = None
    if resume:
        last = checkpoints / "last"
        if not last.exists():
            raise CheckpointError(
                f"--resume: {out_dir} has no checkpoints/last; start without --resume"
            )
        state = check_resumable(run, last.resolve())

    model = Transformer(run.model).to(device)
    if init_from:
        source = ckpt.find_checkpoint(init_from)
        ckpt.load_weights(model, source)
    optimizer = build_optimizer(model, run.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    sampling = {"sampling": run.data.sampling, "document_masking": run.data.document_masking}
    train_loader = BatchLoader(
        data_dir, "train", cfg.micro_batch_size, seq_len, cfg.seed, device=device, **sampling
    )
    val_loader = BatchLoader(
        data_dir, "val", cfg.micro_batch_size, seq_len, cfg.seed, device=device, **sampling
    )
    hellaswag = None
    if cfg.hellaswag_interval > 0:  # read (or download) it now: a bad file fails before training
        from lmforge.evals.hellaswag import load_hellaswag

        hellaswag = load_hellaswag(cfg.hellaswag_data, cfg.hellaswag_limit)

    step, best_val, tokens_seen = 0, float("inf"), 0
    if state is not None:
        ckpt.load_weights(model, (checkpoints / "last").resolve())
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        step, best_val, tokens_seen = state["step"], state["best_val_loss"], state["tokens_seen"]

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.mkdir(exist_ok=True)
    dump_toml(run, out_dir / "config.toml")
    logger = MetricsLogger(out_dir, run.logging, run)
    compiled = torch.compile(model) if cfg.compile else model
    flops_token = flops_per_token(model, seq_len)
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else measure_peak_flops(device, cfg.dtype)
    max_norm = run.optim.grad_clip if run.optim.grad_clip > 0 else float("inf")
    print(
        f"model: {count_parameters(model) / 1e6:.2f}M parameters, {flops_token / 1e6:.1f} MFLOPs/token | "
        f"{device} {cfg.dtype} | batch {cfg.batch_tokens} tokens = {cfg.micro_batch_size} x {seq_len} "
        f"x {accumulation} accumulation | peak {peak / 1e12:.2f} TFLOP/s "
        f"({'given' if cfg.peak_tflops else 'measured'})"
    )

    def save(is_best: bool) -> None:
        info = {"step": step, "tokens_seen": tokens_seen, "val_loss": last_val}
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "loader": train_loader.state_dict(),
            "rng": {"torch": torch.get_rng_state()}
            | ({"cuda": torch.cuda.get_rng_state()} if device.type == "cuda" else {}),
            "step": step,
            "best_val_loss": best_val,
            "tokens_seen": tokens_seen,
            "run_config": to_dict(run),
        }
        name = f"step-{step:07d}"
        ckpt.save_checkpoint(checkpoints / name, model, tokenizer, info, train_state)
        ckpt.point_link(checkpoints / "last", name)
        if is_best:
            ckpt.point_link(checkpoints / "best", name)
        ckpt.prune_checkpoints(checkpoints, cfg.keep_checkpoints)

    result = TrainResult(out_dir, step)
    last_val = None
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="train",
        disable=not run.logging.progress_bar,
        dynamic_ncols=True,
    )
    window_start, window_tokens, paused = time.perf_counter(), 0, 0.0
    loss_sum = torch.zeros((), device=device)
    model.train()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg.max_steps, run.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for _ in range(accumulation):
            batch = train_loader.batch_at(0) if cfg.overfit_one_batch else train_loader.next()
            loss = batch_loss(compiled, batch, autocast) / accumulation
            scaler.scale(loss).backward()
            step_loss += loss.detach()
        scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += cfg.batch_tokens
        window_tokens += cfg.batch_tokens
        loss_sum += step_loss
        bar.update(1)

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            synchronize(device)
            elapsed = time.perf_counter() - window_start - paused
            steps_in_window = window_tokens // cfg.batch_tokens
            mean_loss = (loss_sum / steps_in_window).item()
            tokens_per_s = window_tokens / elapsed
            mfu = flops_token * tokens_per_s / peak
            metrics = {
                "loss": step_loss.item() if steps_in_window == 1 else mean_loss,
                "lr": lr,
                "grad_norm": grad_norm.item(),
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
                "tokens": tokens_seen,
            }
            logger.log(step, metrics)
            result.losses[step] = metrics["loss"]
            bar.write(
                f"step {step:>6}/{cfg.max_steps} | loss {metrics['loss']:.4f} | lr {lr:.2e} | "
                f"grad {metrics['grad_norm']:.3f} | {tokens_per_s:,.0f} tok/s | MFU {100 * mfu:.1f}%"
            )
            if not math.isfinite(metrics["loss"]):
                bar.write("loss is not finite: lower optim.lr, or use train.dtype='fp32' to debug")
            window_start, window_tokens, paused = time.perf_counter(), 0, 0.0
            loss_sum.zero_()

        is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
        is_checkpoint = step % cfg.checkpoint_interval == 0 or step == cfg.max_steps
        pause_start = time.perf_counter()  # eval and saving are not charged to throughput
        if is_eval:
            last_val = evaluate(compiled, val_loader, cfg.eval_batches, autocast)
            logger.log(step, {"val_loss": last_val})
            bar.write(f"step {step:>6}/{cfg.max_steps} | val loss {last_val:.4f}")
        if hellaswag and (step % cfg.hellaswag_interval == 0 or step == cfg.max_steps):
            from lmforge.evals.hellaswag import evaluate_hellaswag

            # The uncompiled model: every batch has a new shape, which would recompile.
            hs = evaluate_hellaswag(
                model, tokenizer, hellaswag, cfg.micro_batch_size, device, cfg.dtype, progress=False
            )
            logger.log(step, {"hellaswag_acc": hs["acc"], "hellaswag_acc_norm": hs["acc_norm"]})
            bar.write(
                f"step {step:>6}/{cfg.max_steps} | hellaswag acc {hs['acc']:.4f} "
                f"acc_norm {hs['acc_norm']:.4f} ({hs['n']} examples)"
            )
        if is_checkpoint:
            is_best = last_val is not None and last_val < best_val
            best_val = min(best_val, last_val) if last_val is not None else best_val
            save(is_best)
        paused += time.perf_counter() - pause_start

    bar.close()
    logger.close()
    plot_run(out_dir)
    result.step, result.val_loss = step, last_val
    return result
