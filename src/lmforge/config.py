"""Run configuration: typed dataclasses, loaded from TOML, overridden from the command line, dumped.

Precedence, lowest first: dataclass defaults < model preset < TOML file < command-line flags.
Command-line flags are parsed by tyro (cli.py); this module checks TOML files against the same
dataclasses so that a misspelled or mistyped key fails before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomllib

from lmforge._validate import from_dict
from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig
from lmforge.models.lora_config import LoraConfig
from lmforge.models.presets import preset_fields
from lmforge.reward_config import RewardConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token shards."""

    source: str = "python-stdlib"
    """A dataset name (python-stdlib, shakespeare, tinystories, wikitext-103, fineweb-edu-10b),
    hf:<dataset id>[:config][:split], or a path / directory / glob of .txt, .jsonl, .json or
    .parquet files."""
    tokenizer: str = "bpe"
    """byte, char, bpe (trained here), or a pretrained tokenizer: cl100k_base, a tokenizer.json /
    tokenizer.model path or a directory holding one."""
    vocab_size: int = 4096
    """BPE vocabulary size (including the end-of-text token); ignored for byte and char."""
    val_fraction: float = 0.05
    """Share of documents held out for validation (of characters, for a single document)."""
    dir: str | None = None
    """Prepared shards go here; None means data/<source>-<tokenizer>[vocab]."""
    shard_tokens: int = 100_000_000
    """Most tokens per shard file."""
    text_field: str = "text"
    """The field holding the text in .jsonl / .json / .parquet records and hf: datasets."""
    workers: int = 0
    """Tokenizer processes for prepare: 0 means os.cpu_count(), 1 tokenizes in-process. The
    output does not depend on it."""
    strict_utf8: bool = False
    """Fail on bytes that are not UTF-8 (naming file and offset) instead of replacing them."""
    tokenizer_train_chars: int = 50_000_000
    """bpe/char: train the tokenizer on at most this many characters from the train split."""
    sampling: Literal["random", "sequential"] = "random"
    """Training/val windows: random offsets, or one in-order pass over the token stream per epoch."""
    document_masking: bool = False
    """Attend only within each document of a packed window (positions restart per document)."""


@dataclass
class OptimConfig:
    """The optimizer (AdamW, or Muon with AdamW) and the learning-rate schedule."""

    name: Literal["adamw", "muon"] = "adamw"
    """adamw: AdamW for every parameter. muon: Muon for the 2-D matrices of the transformer layers
    (attention, FFN) and AdamW (lr, betas, eps) for the embeddings, LM head, norms and biases."""
    lr: float = 1e-3
    min_lr: float = 1e-4
    """Floor of the cosine and the end of the warmup-stable-decay schedule."""
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    """wsd: the final share of steps spent decaying linearly to min_lr."""
    weight_decay: float = 0.1
    """Applied only to weights with >= 2 dimensions (not to norms, biases)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    embedding_lr: float | None = None
    """Peak learning rate of the token embedding (AdamW; with tied embeddings also the LM head);
    None means lr. Each row is updated only when its token occurs, so it can take a far larger
    step than the dense weights."""
    muon_lr: float = 0.02
    """muon: peak learning rate of the Muon matrices; warmup and decay scale it as they scale lr."""
    muon_momentum: float = 0.95
    """muon: Nesterov momentum of the Muon matrices."""


@dataclass
class TrainConfig:
    """The training loop."""

    out_dir: str = "runs/default"
    max_steps: int = 1000
    batch_tokens: int = 16384
    """Global batch in tokens per optimizer step; accumulation steps follow from it."""
    micro_batch_size: int = 16
    """Sequences per forward/backward pass."""
    seq_len: int | None = None
    """Training sequence length; None means the model's context length."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Autocast precision; weights stay fp32. auto: bf16 on GPUs that have it (else fp16 with a
    gradient scaler), and on a CPU bf16 only where a measured matmul shows it is fast (AMX,
    AVX512-BF16), else fp32. fp16 needs a GPU."""
    time_budget: float | None = None
    """Seconds of training to fit the run into: after a few timed steps max_steps is lowered (never
    raised) to what this machine finishes in that time. The chosen max_steps is logged, written to
    config.toml and kept by --resume. None: train.max_steps as given, the same on every machine."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model. auto: on GPUs, and on a CPU when the run is estimated to take
    long enough (~5 min eager) to repay the compile time; the choice is logged."""
    device: str = "auto"
    """auto picks cuda, then mps, then cpu."""
    deterministic: bool = False
    """Deterministic kernels and no TF32, so that a GPU run repeats bitwise (at some speed cost;
    CPU runs with a fixed seed repeat anyway)."""
    seed: int = 1337
    eval_interval: int = 200
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    """Step checkpoints kept besides the best one; older ones are deleted."""
    overfit_one_batch: bool = False
    """Train on a single fixed batch: the loss must approach zero (a sanity check)."""
    peak_tflops: float | None = None
    """Hardware peak for MFU; None measures a matmul in the training dtype (cached per machine)."""
    hellaswag_interval: int = 0
    """Log HellaSwag acc / acc_norm every this many steps (and at the end); 0 is off."""
    hellaswag_limit: int = 200
    """Evaluate on the first this many HellaSwag validation examples."""
    hellaswag_data: str | None = None
    """HellaSwag file (jsonl or llama.cpp text format); None downloads the validation jsonl."""
    early_stopping_patience: int = 0
    """Stop (with a final checkpoint) after this many evaluations without a new best val loss;
    0 never stops early."""
    eval_at_start: bool = False
    """Also evaluate before the first step (the starting model's val metrics, logged at step 0)."""


@dataclass
class ParallelConfig:
    """How the run spreads over processes (launched by torchrun or `lmforge launch`).

    The global batch (train.batch_tokens) stays fixed: per-rank accumulation steps follow from it.
    """

    strategy: Literal["ddp", "zero1", "fsdp"] = "ddp"
    """ddp: replicate the model, average gradients (a plain model at world size 1); zero1: ddp
    with the optimizer state sharded over ranks; fsdp: FSDP2 fully_shard of every block and the
    root (parameters, gradients and optimizer state sharded)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend: auto is nccl with CUDA GPUs, gloo otherwise."""
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    """Recompute activations in the backward pass: full recomputes whole blocks; selective keeps
    matmul and attention outputs and recomputes the cheap elementwise ops."""
    cpu_offload: bool = False
    """fsdp: keep sharded parameters, gradients and optimizer state in CPU memory."""
    tensor_parallel: int = 1
    """Tensor-parallel degree: each block's heads and FFN columns split over this many ranks
    (DTensor), composed with FSDP over the remaining world_size / tensor_parallel ranks (a 2-D
    mesh; needs strategy fsdp). It must divide the heads, KV heads and FFN width."""
    sequence_parallel: bool = True
    """With tensor_parallel > 1: split the norms' and residuals' tokens over the tensor-parallel
    ranks too (less activation memory; a reduce-scatter instead of an all-reduce)."""
    consolidate: bool = True
    """fsdp: also gather the full model into model.safetensors at each checkpoint (needed by
    sample, eval and export; otherwise run `lmforge consolidate` on the checkpoint later)."""


@dataclass
class HealthConfig:
    """What a step does when its loss or gradients go bad (see docs/reliability.md)."""

    max_bad_steps: int = 3
    """Consecutive steps with a non-finite loss or gradient norm (each one skipped) before
    on_bad_steps acts."""
    on_bad_steps: Literal["rollback", "stop"] = "rollback"
    """rollback: reload the last checkpoint and scale the learning rate by rollback_lr_factor;
    stop: end the run with a report of the step and the first non-finite gradient."""
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 2
    """Stop instead of rolling back once this many rollbacks have happened."""
    spike_window: int = 100
    """Finite losses remembered for spike detection; 0 turns it off."""
    spike_zscore: float = 6.0
    """A loss this many standard deviations above the window's mean is a spike."""
    skip_spikes: bool = False
    """Skip the optimizer step on a spike too (by default spikes are only counted and logged)."""


@dataclass
class LoggingConfig:
    progress_bar: bool = True
    wandb: bool = False
    """Log to Weights & Biases (pip install 'lmforge[wandb]'; WANDB_MODE=offline works)."""
    wandb_project: str = "lmforge"
    tensorboard: bool = False
    """Write TensorBoard events to <out_dir>/tensorboard (pip install 'lmforge[tensorboard]')."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class GRPOConfig:
    """`finetune grpo` (`[finetune.grpo]`): sampling and the clipped objective (grpo_losses.py).
    train.micro_batch_size counts prompts; each one yields group_size completions."""

    group_size: int = 8
    """Completions sampled per prompt (G); advantages compare the completions of one prompt."""
    max_new_tokens: int = 128
    """Longest completion; a prompt longer than train.seq_len minus this is dropped."""
    temperature: float = 1.0
    top_p: float = 1.0
    mu: int = 1
    """Optimizer steps per generation batch: 1 samples every step; mu > 1 trains mu steps on
    each batch of rollouts against the log-probs of the policy that sampled them."""
    clip_eps: float = 0.2
    """The ratio's band is [1 - clip_eps, 1 + clip_eps_high]."""
    clip_eps_high: float | None = None
    """None: clip_eps (symmetric); DAPO's clip-higher uses 0.28."""
    beta: float = 0.0
    """Weight of the k3 KL penalty to the starting model; 0 skips the reference pass."""
    scale_by_std: bool = False
    """Divide advantages by the group's std (DeepSeekMath); off as in Dr. GRPO."""
    normalization: Literal["token", "sequence"] = "token"
    """token: mean over all completion tokens of a micro-batch; sequence: per row, then rows."""


@dataclass
class FinetuneConfig:
    """`lmforge finetune sft|dpo|distill|grpo`: data, objective and model transform."""

    method: Literal["sft", "dpo", "distill", "grpo"] = "sft"
    init_from: str | None = None
    """Starting weights: an lmforge checkpoint or run dir, a .gguf file or a Hugging Face model
    dir (read in memory; the model config and tokenizer come from it). distill: the teacher's
    tokenizer is used and this is optional."""
    data: str = ""
    """Training records: .json (array), .jsonl or .jsonl.gz (grpo: prompt records, see
    data/prompt_records.py)."""
    data_format: Literal[
        "auto", "alpaca", "messages", "sharegpt", "hh", "sharegpt-pairs", "message-pairs"
    ] = "auto"
    """Record layout; auto detects it from the first record's keys."""
    val_data: str | None = None
    """Held-out records; None holds out val_fraction of `data`."""
    val_fraction: float = 0.05
    val_max_examples: int = 200
    """At most this many held-out examples (a small, fixed val set)."""
    template: str | None = None
    """Chat template: a built-in name (chatml, llama3, llama2, alpaca) or Jinja source; None uses
    the tokenizer's own."""
    packing: bool = False
    """SFT/distill: pack several examples per row, each attending only to itself."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo_beta: float = 0.1
    """DPO: strength of the implicit KL constraint to the reference model."""
    teacher: str | None = None
    """distill: teacher checkpoint/run dir, .gguf file or HF dir."""
    temperature: float = 2.0
    """distill: softmax temperature of the KL term (which is scaled by T^2)."""
    distill_alpha: float = 0.5
    """distill: loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE."""
    student_layers: int = 0
    """distill: >0 makes the student the teacher's config with this many layers; 0 uses [model]."""
    student_init: Literal["teacher", "random"] = "teacher"
    """distill with student_layers: copy embeddings, final norm and evenly spaced layers from the
    teacher, or start from a random init."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    """grpo: the reward functions and their weights (reward_config.py)."""


@dataclass
class FinetuneRunConfig(RunConfig):
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def resolve_config_path(name_or_path: str) -> Path:
    """A TOML path, or the name of a config shipped with lmforge (e.g. `quickstart`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a shipped config; use a .toml path "
        f"or one of: {', '.join(names)}"
    )


def load_run_config(
    name_or_path: str | None, preset: str | None = None, cls: type = RunConfig
) -> RunConfig:
    """Defaults, then the model preset (from `preset` or the file's model.preset), then the file.

    An explicit `preset` (the --model.preset flag) replaces the file's [model] table instead.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML ({error}); fix the syntax") from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{path} is not UTF-8 text (byte {error.start}); TOML files must be UTF-8: "
                "re-save it as UTF-8"
            ) from None
        except OSError as error:
            raise ConfigError(f"{path} cannot be read ({error.strerror}); check the path") from None
    return config_from_dict(data, source, preset, cls)


def config_from_dict(
    data: dict, source: str = "config", preset: str | None = None, cls: type = RunConfig
) -> RunConfig:
    """A preset passed explicitly (from --model.preset) replaces the file's whole [model] table."""
    model_data = {} if preset else data.get("model", {})
    if not isinstance(model_data, dict):
        raise ConfigError(f"{source}: 'model' must be a table, got {model_data!r}")
    model_data = dict(model_data)
    preset = preset or model_data.get("preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"{source}: model.preset must be str, got {preset!r}")
        model_data = preset_fields(preset) | model_data | {"preset": preset}
    return from_dict(cls, {**data, "model": model_data}, source)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def dump_toml(config: RunConfig, path: Path) -> None:
    """Write the fully resolved config; None values are left out (TOML has no null)."""

    def drop_none(d: dict) -> dict:
        return {
            k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None
        }

    path.write_text(tomli_w.dumps(drop_none(to_dict(config))))
