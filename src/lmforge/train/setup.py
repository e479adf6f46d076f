"""Setting up a training run, once the process group exists: data, tokenizer, model, parallel
strategy, optimizer and resume, gathered into a `TrainSetup` the step and the periodic work use.

The order matters and is kept: the data and tokenizer come first (the vocabulary sizes the model),
resume state is read before the model is built (the weights load before parallelising), and the
counters are restored last.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.checkpoint import directory as ckpt
from lmforge.checkpoint.pretrained import open_weights
from lmforge.checkpoint.run_state import (
    check_resumable,
    latest_intact_checkpoint,
    restore_sharded,
    rows_changed,
    step_checkpoints,
    weights_before_parallelize,
)
from lmforge.config import RunConfig, TrainConfig, dump_toml
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.counting import build_on_meta, count_parameters, flops_per_token
from lmforge.models.transformer import Transformer
from lmforge.optim.optimizers import build_optimizer
from lmforge.parallel.dist import DistInfo, decided_by_main, elastic_restart_count
from lmforge.parallel.materialize import load_local, materialize
from lmforge.parallel.parallelize import ParallelModel, layout_name, parallelize
from lmforge.parallel.planner import startup_warning
from lmforge.parallel.sharded_state import SHARDED_DIR, holds_model
from lmforge.runtime import (
    autocast_context,
    choose_compile,
    configure_math,
    format_flops,
    measure_peak_flops,
)
from lmforge.tokenizer import Tokenizer
from lmforge.train.balancing import BalancingHook, balancing_hook
from lmforge.train.early_stopping import EarlyStopping
from lmforge.train.health import LossHealth
from lmforge.train.hellaswag import load_before_training
from lmforge.train.metrics import MetricsLogger
from lmforge.train.objective import Loader, Objective


@dataclass
class Counters:
    """Where the run is; saved in every checkpoint (last_val only in its summary)."""

    step: int = 0
    best_val: float = float("inf")
    tokens_seen: int = 0
    lr_scale: float = 1.0
    last_val: float | None = None


@dataclass
class TrainSetup:
    """Everything a run's steps, evaluations and checkpoints work with."""

    run: RunConfig
    info: DistInfo
    objective: Objective
    out_dir: Path
    autocast: object
    tokenizer: Tokenizer
    seq_len: int
    accumulation: int
    model: Transformer
    parallel: ParallelModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: Loader
    val_loader: Loader
    hellaswag: list | None
    health: LossHealth
    early_stopping: EarlyStopping
    balancing: BalancingHook
    flops_token: float
    peak: float
    compile_reason: str
    resumed_from: Path | None
    train_state: dict | None
    """The resumed checkpoint's train state (None for a fresh run)."""
    logger: MetricsLogger | None = None

    @property
    def cfg(self) -> TrainConfig:
        return self.run.train

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def say(self, message: str) -> None:
        """A line on rank 0's console (other ranks stay quiet)."""
        if self.info.is_main:
            tqdm.write(message)

    def restore(self, directory: Path, state: dict, optimizer_too: bool = True) -> tuple:
        """Optimizer, loader, RNG (and FSDP's model) from a checkpoint; returns the counters
        (step, best_val_loss, tokens_seen, lr_scale)."""
        if optimizer_too:
            changed = rows_changed(state, self.run.parallel.tensor_parallel)
            restore_sharded(directory, self.model, self.optimizer, self.info, changed)
            self.scaler.load_state_dict(state["scaler"])
        self.train_loader.load_state_dict(state["loader"])
        self.objective.load_state_dict(state.get("objective", {}), self.info)
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        counters = ("step", "best_val_loss", "tokens_seen", "lr_scale")
        return tuple(state[key] for key in counters)


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


def check_out_dir(run: RunConfig, resume: bool) -> bool:
    """Whether to resume: refuses to overwrite a run's checkpoints without --resume."""
    out_dir = Path(run.train.out_dir)
    checkpoints = out_dir / "checkpoints"
    has_checkpoint = bool(checkpoints.is_dir() and step_checkpoints(checkpoints))
    if elastic_restart_count() > 0 and has_checkpoint:
        resume = True  # torchrun restarted the group after a failure: continue, don't restart
    if has_checkpoint and not resume:
        raise ConfigError(
            f"{out_dir} already holds checkpoints; pass --resume to continue it, "
            "or choose a new --train.out_dir"
        )
    return resume


def resume_point(run: RunConfig, info: DistInfo, reset_optimizer: bool) -> tuple[Path, dict]:
    """The newest intact checkpoint (rank 0's choice) and its train state, checked against run."""
    out_dir = Path(run.train.out_dir)
    checkpoints = out_dir / "checkpoints"
    if not (checkpoints.is_dir() and step_checkpoints(checkpoints)):
        raise CheckpointError(f"--resume: {out_dir} has no checkpoints; start without --resume")
    warn = tqdm.write if info.is_main else (lambda message: None)
    last = decided_by_main(info, lambda: latest_intact_checkpoint(checkpoints, warn))
    return last, check_resumable(run, last, reset_optimizer)


def prepare_data(run: RunConfig, info: DistInfo, objective: Objective):
    """(run with the vocabulary filled in, tokenizer, seq_len, accumulation steps)."""
    progress = run.logging.progress_bar and info.is_main
    tokenizer = objective.prepare(run, info, progress)
    run = resolve_vocab(run, tokenizer)
    run.model.validate()
    seq_len = run.train.seq_len or run.model.context_length
    if seq_len > run.model.context_length:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds model.context_length={run.model.context_length}; "
            "lower the first or raise the second"
        )
    return run, tokenizer, seq_len, accumulation_steps(run, seq_len, info.data_ranks)


def build_model(
    run: RunConfig,
    device: torch.device,
    init_from: str | None,
    objective: Objective,
    last: Path | None,
    reset_optimizer: bool,
) -> Transformer:
    """The plain model with its starting weights, whole on this rank: the fine-tuning objectives
    (their transform loads weights and adds adapters to a real model). Pretraining builds on the
    meta device instead (`meta_model` and `starting_weights`)."""
    model = Transformer(run.model).to(device)
    if init_from:
        source = ckpt.find_checkpoint(init_from)
        ckpt.verify_checkpoint(source, required=False)  # a corrupt checkpoint is refused whole
        ckpt.read_model_config(source)
        ckpt.load_weights(model, source)
    objective.transform(model)  # e.g. finetuning's starting weights and LoRA adapters
    if last is not None:
        weights_before_parallelize(model, last, whole_file=reset_optimizer)
    return model


def starting_weights(
    info: DistInfo, init_from: str | None, last: Path | None, reload_whole: bool
) -> Callable[[Transformer], None]:
    """What `parallelize` calls on a meta-built model once each rank's share is known: allocate
    it, draw the seeded init, then read this rank's slices of the resumed or --init_from weights.
    (FSDP's resumed weights come later, from the sharded state, by `restore_sharded`.)"""

    def start(model: Transformer) -> None:
        materialize(model, info.device)
        if last is not None:
            if reload_whole or not holds_model(last / SHARDED_DIR):
                _load(model, str(last))
        elif init_from:
            _load(model, init_from)

    return start


def _load(model: Transformer, where: str) -> None:
    """This rank's slices of the weights at `where` (their config is checked on opening; the
    shapes against the model's before any read)."""
    _, source = open_weights(where)
    try:
        load_local(model, source, where)
    finally:
        source.close()


def decide_compile(cfg: TrainConfig, info: DistInfo, run_flops: float, peak: float):
    """(compile?, the reason logged), decided by rank 0 for every rank."""
    return decided_by_main(
        info,
        lambda: choose_compile(
            cfg.compile, info.device, run_flops / info.world_size, peak, cfg.time_budget
        ),
    )


def set_up(
    run: RunConfig,
    info: DistInfo,
    resume: bool,
    init_from: str | None,
    objective: Objective,
    start_step: int | None,
    reset_optimizer: bool,
) -> tuple[TrainSetup, Counters]:
    """Everything the loop needs, and the counters it starts from (resumed or zero)."""
    resume = check_out_dir(run, resume)
    configure_math(info.device, run.train.deterministic)
    autocast = autocast_context(info.device, run.train.dtype)
    torch.manual_seed(run.train.seed)
    run, tokenizer, seq_len, accumulation = prepare_data(run, info, objective)
    warning = startup_warning(run, info.world_size, info.device)  # the memory planner's estimate
    if warning and info.is_main:
        tqdm.write(f"warning: {warning}")
    cfg = run.train
    last, state = resume_point(run, info, reset_optimizer) if resume else (None, None)
    start = None
    if objective.builds_on_meta:  # nothing is allocated until each rank knows its share
        model = build_on_meta(run.model)
        changed = state is not None and rows_changed(state, run.parallel.tensor_parallel)
        start = starting_weights(info, init_from, last, reset_optimizer or changed)
    else:
        model = build_model(run, info.device, init_from, objective, last, reset_optimizer)
    flops_token = flops_per_token(model, seq_len)
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else None
    if peak is None:
        peak = decided_by_main(info, lambda: measure_peak_flops(info.device, cfg.dtype))
    first_step = start_step if start_step is not None else state["step"] if state else 0
    run_flops = flops_token * cfg.batch_tokens * max(cfg.max_steps - first_step, 0)
    compile_model, compile_reason = decide_compile(cfg, info, run_flops, peak)
    parallel = parallelize(model, run.parallel, info, cfg.dtype, compile_model, start)
    optimizer = build_optimizer(
        model, run.optim, info.device, shard_over_ranks=run.parallel.strategy == "zero1"
    )
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.dtype == "fp16")
    train_loader, val_loader = objective.loaders(run, info, seq_len, info.device)
    setup = TrainSetup(
        run=run,
        info=info,
        objective=objective,
        out_dir=Path(cfg.out_dir),
        autocast=autocast,
        tokenizer=tokenizer,
        seq_len=seq_len,
        accumulation=accumulation,
        model=model,
        parallel=parallel,
        optimizer=optimizer,
        scaler=scaler,
        train_loader=train_loader,
        val_loader=val_loader,
        hellaswag=load_before_training(cfg, info),
        health=LossHealth(run.health),
        early_stopping=EarlyStopping(cfg.early_stopping_patience),
        balancing=balancing_hook(model, info),
        flops_token=flops_token,
        peak=peak,
        compile_reason=compile_reason,
        resumed_from=last,
        train_state=state,
    )
    counters = restore_counters(setup, start_step, reset_optimizer)
    start_logging(setup, counters)
    return setup, counters


def restore_counters(setup: TrainSetup, start_step: int | None, reset_optimizer: bool) -> Counters:
    counters = Counters()
    state = setup.train_state
    if state is not None:
        restored = setup.restore(setup.resumed_from, state, not reset_optimizer)
        counters.step, counters.best_val, counters.tokens_seen, counters.lr_scale = restored
        setup.health.load_state_dict(state["health"])
        if "early_stopping" in state:
            setup.early_stopping.load_state_dict(state["early_stopping"])
    if start_step is not None:
        counters.step = start_step
    return counters


def start_logging(setup: TrainSetup, counters: Counters) -> None:
    """config.toml and the metrics log (rank 0), and the run's summary line."""
    run, cfg, info = setup.run, setup.cfg, setup.info
    if info.is_main:
        setup.checkpoints.mkdir(parents=True, exist_ok=True)
        dump_toml(run, setup.out_dir / "config.toml")
        setup.logger = MetricsLogger(setup.out_dir, run.logging, run)
    setup.say(
        f"model: {count_parameters(setup.model) / 1e6:.2f}M parameters, {setup.flops_token / 1e6:.1f} MFLOPs/token | "
        f"{setup.device} {cfg.dtype} | batch {cfg.batch_tokens} tokens = {cfg.micro_batch_size} x {setup.seq_len} "
        f"x {info.data_ranks} ranks x {setup.accumulation} accumulation | {layout_name(run.parallel, info)} | "
        f"peak {format_flops(setup.peak)} ({'given' if cfg.peak_tflops else 'measured'}) | {setup.compile_reason}"
    )
    if setup.train_state is not None:
        setup.say(
            f"resumed from {setup.resumed_from} at step {counters.step} ({info.world_size} ranks)"
        )
