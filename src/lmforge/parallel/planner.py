"""Memory per rank of a training run under each parallel layout, and the fastest layout that fits.

Pure arithmetic from the model config and the run's settings: the model is counted on the meta
device, nothing is allocated and no process group is needed. Per rank, in bytes:

- parameters: fp32 weights (lmforge trains fp32 master weights; autocast computes in bf16);
- gradients: fp32. DDP (and ZeRO-1, which runs on DDP) keeps a second copy in its all-reduce
  buckets at world size > 1. FSDP keeps its shard (lmforge reduce-scatters every micro-step);
- optimizer: AdamW two fp32 moments, Muon one (AdamW for the rest); ZeRO-1 keeps the share of
  the parameters torch's ZeroRedundancyOptimizer gives this rank, FSDP 1/N;
- activations of one micro-batch (activation_memory.py);
- transient: the bf16 copies of the matmul weights that autocast makes in the forward pass and
  the backward pass still uses (DDP, ZeRO-1); under FSDP, which gathers in the compute dtype
  instead, the gathered blocks (the current and the prefetched one), its root module
  (embeddings, head), which stays gathered from forward to backward, and one block's unsharded
  gradients;
- overhead: the process itself (interpreter, libraries, CUDA context, communication buffers).

It is conservative: gradients and activations are counted as alive at once, as they are while
micro-steps accumulate; with one micro-step per optimizer step the true peak can be lower by the
smaller of the two. `cpu_offload` moves FSDP's shards (parameters, gradients, optimizer) to host
memory, which is reported apart from the device's.

Tensor parallelism (GPU plans only) divides each rank's share of the model and of the
activations by the degree (sequence parallelism splits the norms too), and the data-parallel
degree becomes world_size / tensor_parallel. `layouts()` offers degrees 2, 4 and 8 that divide
the ranks of one node and the model's heads, after FSDP alone: each layer then communicates, so
it is slower, and worth it only where FSDP alone does not fit. Its estimate is arithmetic that
no measured tensor-parallel run has checked yet (the FSDP and DDP ones have been).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from lmforge.config import RunConfig
from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig
from lmforge.models.counting import build_on_meta
from lmforge.optim.optimizers import muon_parameter
from lmforge.parallel.activation_memory import activation_bytes
from lmforge.parallel.tensor_parallel import check_tensor_parallel

GiB = 2**30
FP32 = 4
COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OVERHEAD_BYTES = {"cpu": int(0.5 * GiB), "cuda": int(1.5 * GiB)}
"""What a rank holds besides the model. CPU: the interpreter, torch, lmforge, gloo and the data
loader (a gloo rank training a tiny model peaks at 0.41 GiB RSS: memory_per_rank.py --dry-run;
with a 1 GB model the estimate lands within 7% of each rank's peak, BENCHMARKS.md). CUDA: the
context, cuBLAS and NCCL workspaces and the caching allocator's slack (a guess until a GPU run
measures it)."""
STRATEGIES = ("ddp", "zero1", "fsdp")
CHECKPOINTING = ("none", "selective", "full")


@dataclass(frozen=True)
class Layout:
    strategy: str
    activation_checkpointing: str = "none"
    cpu_offload: bool = False
    tensor_parallel: int = 1

    @property
    def name(self) -> str:
        tp = f"+tp{self.tensor_parallel}" if self.tensor_parallel > 1 else ""
        return self.strategy + tp + ("+offload" if self.cpu_offload else "")


@dataclass(frozen=True)
class PlanInput:
    """What the estimate needs from a run, resolved: the vocabulary known, the dtype concrete."""

    model: ModelConfig
    micro_batch_size: int
    seq_len: int
    dtype: str
    optimizer: str
    world_size: int
    device: str
    """cpu or cuda: which overhead applies, and whether offloading to the host saves anything."""
    accumulation: int = 1
    ranks_per_node: int = 0
    """Tensor-parallel groups stay inside a node; 0 means all ranks are on one node."""


@dataclass(frozen=True)
class ModelCounts:
    parameters: int
    largest_block: int
    root: int
    """Parameters outside the blocks: embeddings, final norm, head (FSDP's root unit)."""
    autocast_copies: int
    """Parameters autocast casts to the compute dtype (matmul weights, not embeddings/norms)."""
    muon: int
    groups: tuple[tuple[int, ...], ...]
    """Sizes of the parameters in each AdamW group (ZeRO-1 partitions them group by group)."""


@dataclass(frozen=True)
class Estimate:
    layout: Layout
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    overhead: float
    host: float = 0.0
    """Bytes moved to host memory by cpu_offload (not on the device)."""

    @property
    def total(self) -> float:
        return (
            self.parameters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.transient
            + self.overhead
        )


def count_model(config: ModelConfig) -> ModelCounts:
    model = build_on_meta(config)
    named = list(model.named_parameters())  # a tied head appears once, as the embedding
    blocks = [sum(p.numel() for p in block.parameters()) for block in model.layers]
    total = sum(p.numel() for _, p in named)
    copies = sum(p.numel() for n, p in named if p.dim() >= 2 and "embedding" not in n)
    if config.tie_embeddings:  # the tied embedding is cast as the head's weight
        copies += model.lm_head.weight.numel()
    return ModelCounts(
        parameters=total,
        largest_block=max(blocks),
        root=total - sum(blocks),
        autocast_copies=copies,
        muon=sum(p.numel() for n, p in named if muon_parameter(n, p)),
        groups=(
            tuple(p.numel() for _, p in named if p.dim() >= 2),
            tuple(p.numel() for _, p in named if p.dim() < 2),
        ),
    )


def zero1_largest_share(groups: tuple[tuple[int, ...], ...], ranks: int) -> int:
    """The most parameters ZeroRedundancyOptimizer gives one rank: each group's tensors, largest
    first, go to the rank with the fewest so far (its _partition_parameters)."""
    sizes = [0] * ranks
    for group in groups:
        for numel in sorted(group, reverse=True):
            sizes[sizes.index(min(sizes))] += numel
    return max(sizes)


def optimizer_state_bytes(counts: ModelCounts, optimizer: str) -> int:
    if optimizer == "muon":  # one momentum for the layers' matrices, AdamW's two for the rest
        return FP32 * counts.muon + 2 * FP32 * (counts.parameters - counts.muon)
    return 2 * FP32 * counts.parameters


def estimate(
    config: ModelConfig,
    layout: Layout,
    *,
    world_size: int = 1,
    micro_batch: int = 1,
    seq_len: int | None = None,
    dtype: str = "bf16",
    optimizer: str = "adamw",
    device: str = "cuda",
    accumulation: int = 1,
) -> Estimate:
    """Peak bytes per rank of training `config` (vocabulary set) with `layout`; `seq_len`
    defaults to the model's context. For a run config, plan_input() and estimate_plan()."""
    plan = PlanInput(
        config, micro_batch, seq_len or config.context_length, dtype, optimizer, world_size,
        device, accumulation,
    )  # fmt: skip
    return estimate_plan(plan, layout)


def estimate_plan(plan: PlanInput, layout: Layout, counts: ModelCounts | None = None) -> Estimate:
    """Peak bytes per rank of `plan` trained with `layout` (see the module docstring)."""
    counts = counts or count_model(plan.model)
    tp = layout.tensor_parallel
    ranks = plan.world_size // tp  # the data-parallel degree
    a = COMPUTE_BYTES[plan.dtype]
    P = counts.parameters / tp
    optimizer = optimizer_state_bytes(counts, plan.optimizer) / tp
    activations = activation_bytes(
        plan.model, plan.micro_batch_size, plan.seq_len, a, layout.activation_checkpointing
    )
    activations /= tp
    overhead = OVERHEAD_BYTES.get(plan.device, OVERHEAD_BYTES["cuda"])
    if layout.strategy == "fsdp":
        shards = (FP32 * P / ranks, FP32 * P / ranks, optimizer / ranks)
        block, root = counts.largest_block / tp, counts.root / tp
        # two gathered blocks (current, prefetched), the root kept gathered with its unsharded
        # gradients, and one block's unsharded gradients with their fp32 copy for the reduction
        # (the root's own reduction comes last, once the activations are gone)
        transient = a * 2 * block + 2 * a * root + (a + FP32) * block
        host = 0.0
        if layout.cpu_offload:
            host, shards = sum(shards), (0.0, 0.0, 0.0)
        params, grads, optim = shards
        return Estimate(layout, params, grads, optim, activations, transient, overhead, host)
    # autocast's bf16 copies of the matmul weights live from the forward pass to the backward
    copies = a * counts.autocast_copies / tp if a < FP32 else 0.0
    grads = FP32 * P * (2 if ranks > 1 else 1)  # DDP's buckets hold a second copy
    if layout.strategy == "zero1":
        optimizer *= zero1_largest_share(counts.groups, ranks) / counts.parameters
    return Estimate(layout, FP32 * P, grads, optimizer, activations, copies, overhead)


def layouts(plan: PlanInput) -> list[Layout]:
    """The layouts lmforge can train `plan` with, fastest first: less communication first (ddp,
    zero1, fsdp, fsdp with offload), then less recomputation (none, selective, full)."""
    strategies = [(s, False) for s in STRATEGIES]
    if plan.device != "cpu":  # on a CPU the host is the device: offloading frees nothing
        strategies.append(("fsdp", True))
    if plan.optimizer == "muon":  # Muon needs whole matrices (optim/optimizers.py)
        strategies = [("ddp", False)]
    if plan.dtype == "fp16":  # FSDP would need a sharded gradient scaler
        strategies = [s for s in strategies if s[0] != "fsdp"]
    found = [Layout(s, mode, offload) for s, offload in strategies for mode in CHECKPOINTING]
    if plan.device == "cpu" or not any(s == ("fsdp", False) for s in strategies):
        return found
    per_node = plan.ranks_per_node or plan.world_size
    degrees = [tp for tp in (2, 4, 8) if per_node % tp == 0 and _splits(plan.model, tp)]
    split = [Layout("fsdp", mode, False, tp) for tp in degrees for mode in CHECKPOINTING]
    first_offload = next((i for i, layout in enumerate(found) if layout.cpu_offload), len(found))
    return found[:first_offload] + split + found[first_offload:]


def _splits(model: ModelConfig, degree: int) -> bool:
    try:
        check_tensor_parallel(model, degree, sequence_parallel=True)
    except ConfigError:
        return False
    return True


def plan_layouts(plan: PlanInput) -> list[Estimate]:
    counts = count_model(plan.model)
    return [estimate_plan(plan, layout, counts) for layout in layouts(plan)]


def fastest_fit(estimates: list[Estimate], budget: float) -> Estimate | None:
    """The first (fastest) layout whose estimate fits `budget` bytes per rank."""
    return next((e for e in estimates if e.total <= budget), None)


def ranks_to_fit(plan: PlanInput, layout: Layout, budget: float) -> int | None:
    """The fewest ranks at which `layout` (a sharding one) fits, or None if no count does."""
    tp = layout.tensor_parallel  # ranks come in whole tensor-parallel groups
    one, two = (
        estimate_plan(dataclasses.replace(plan, world_size=n * tp), layout).total for n in (1, 2)
    )
    sharded = 2 * (one - two)  # the part that divides by the number of replicas
    fixed = one - sharded
    if fixed >= budget or sharded <= 0:
        return None
    return tp * max(1, math.ceil(sharded / (budget - fixed)))


def plan_input(run: RunConfig, world_size: int, device: str) -> PlanInput:
    """The planner's view of a run: vocabulary from the tokenizer setting where the model leaves
    it open, the dtype `auto` resolves to on `device`, the accumulation the batch implies."""
    model = run.model
    if model.vocab_size is None:
        model = dataclasses.replace(model, vocab_size=tokenizer_vocab(run))
    model.validate()
    seq_len = run.train.seq_len or model.context_length
    dtype = run.train.dtype
    if dtype == "auto":  # a CPU trains bf16 only where a measurement finds it fast: assume not
        dtype = "bf16" if device == "cuda" else "fp32"
    per_step = max(1, run.train.micro_batch_size * seq_len * world_size)
    return PlanInput(
        model=model,
        micro_batch_size=run.train.micro_batch_size,
        seq_len=seq_len,
        dtype=dtype,
        optimizer=run.optim.name,
        world_size=world_size,
        device=device,
        accumulation=max(1, run.train.batch_tokens // per_step),
    )


def tokenizer_vocab(run: RunConfig) -> int:
    """model.vocab_size as training resolves it, for the tokenizers whose size the config says."""
    sizes = {"byte": 257, "bpe": run.data.vocab_size}
    if run.data.tokenizer not in sizes:
        raise ConfigError(
            f"model.vocab_size follows the tokenizer ({run.data.tokenizer}), which the planner "
            "does not load; pass --model.vocab_size N"
        )
    return 64 * math.ceil(sizes[run.data.tokenizer] / 64)


def format_bytes(n: float) -> str:
    if n >= 2**40:
        return f"{n / 2**40:,.1f} TiB"
    return f"{n / GiB:.2f} GiB"


def host_memory_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); the free physical pages elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def device_budget(device: torch.device, ranks_per_node: int) -> tuple[int | None, str]:
    """(bytes this rank may use now, where the figure comes from); None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return None, f"unknown on {device.type}"
    available = host_memory_available()
    if available is None:
        return None, "host memory unknown"
    return available // ranks_per_node, f"host MemAvailable / {ranks_per_node} ranks per node"


def startup_warning(run: RunConfig, world_size: int, device: torch.device) -> str | None:
    """One line when the run's layout is estimated not to fit this rank's memory, else None.

    Call it once the vocabulary is resolved (after data preparation). Ranks per node come from
    torchrun's LOCAL_WORLD_SIZE. A warning never stops a run: the estimate is conservative.
    """
    parallel = run.parallel
    # tensor_parallel: where the config has it (the planner divides by it; it offers none)
    tp = getattr(parallel, "tensor_parallel", 1)
    layout = Layout(parallel.strategy, parallel.activation_checkpointing, parallel.cpu_offload, tp)
    ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    budget, source = device_budget(device, max(1, ranks_per_node))
    if budget is None:
        return None
    try:
        plan = plan_input(run, world_size, "cuda" if device.type == "cuda" else "cpu")
    except ConfigError:
        return None  # e.g. a vocabulary the planner cannot know; the run checks the config itself
    need = estimate_plan(plan, layout).total
    if need <= budget:
        return None
    better = fastest_fit(plan_layouts(plan), budget)
    advice = (
        f"{better.layout.name} with activation_checkpointing={better.layout.activation_checkpointing} "
        f"should fit ({format_bytes(better.total)})"
        if better
        else "no layout fits at this world size; see `lmforge plan`"
    )
    return (
        f"this run may run out of memory: {layout.name} with activation_checkpointing="
        f"{layout.activation_checkpointing} needs about {format_bytes(need)} per rank, "
        f"{format_bytes(budget)} {source}; {advice}"
    )
