"""Optimizer state (and FSDP model shards) in a torch.distributed.checkpoint directory.

The state is keyed by parameter name, not by optimizer slot, so the layout does not depend on
the strategy or the number of ranks: each rank writes the tensors it owns (FSDP: its shard of
every tensor; ZeRO-1: the whole state of its share of the parameters; DDP: rank 0 writes the
replicated state once), and each rank reads back exactly what it owns now, resharded by DCP.
That is what lets a run saved at 2 ranks resume at 1, or at 1 resume at 2, or switch strategy.
Each parameter's entry is its own optimizer's state: AdamW's step and moments, or Muon's momentum.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lmforge.errors import CheckpointError
from lmforge.models.row_layouts import current_rows, plain_rows, tensor_parallel_rows
from lmforge.optim.optimizers import MuonAdamW, inner_optimizers
from lmforge.parallel.dist import DistInfo
from lmforge.parallel.materialize import fill_from_full, local_part
from lmforge.parallel.safe_load import safe_dcp_load
from lmforge.parallel.safe_reader import SafeReader

SHARDED_DIR = "sharded_state"
ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")
MUON_STATE = ("momentum_buffer",)


@contextmanager
def _quiet_single_process():
    # no_dist=True is deliberate for a single process; DCP still warns about it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _owned_parameters(model: nn.Module, optimizer: torch.optim.Optimizer | MuonAdamW):
    """(name, parameter, torch optimizer) for every parameter whose state this rank holds."""
    names = {id(p): name for name, p in model.named_parameters()}
    for inner in inner_optimizers(optimizer):
        for group in inner.param_groups:
            for param in group["params"]:
                yield names[id(param)], param, inner


def _state_keys(inner: torch.optim.Optimizer) -> tuple[str, ...]:
    return MUON_STATE if isinstance(inner, torch.optim.Muon) else ADAMW_STATE


def _state_template(inner: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    """Tensors of the right shapes for DCP to load one parameter's state into."""
    return {
        key: torch.zeros((), dtype=torch.float32) if key == "step" else torch.zeros_like(param)
        for key in _state_keys(inner)
    }


def save_sharded_state(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | MuonAdamW,
    info: DistInfo,
    include_model: bool,
) -> None:
    """Collective: every rank calls it with the same directory."""
    state: dict = {
        "optimizer": {
            name: {key: inner.state[param][key] for key in _state_keys(inner)}
            for name, param, inner in _owned_parameters(model, optimizer)
            if param in inner.state
        }
    }
    if include_model:
        state["model"] = model.state_dict()
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(directory), no_dist=not info.initialized)


def holds_model(directory: Path) -> bool:
    metadata = SafeReader(directory).read_metadata()
    return any(key.startswith("model.") for key in metadata.state_dict_metadata)


def load_sharded_state(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | MuonAdamW,
    info: DistInfo,
    rows_changed: bool = False,
) -> None:
    """Fill this rank's optimizer state (and the model, if the directory holds it) in place.
    rows_changed: the state was saved with the other row order (tensor parallelism on one side
    only, models/row_layouts.py); the model then comes from model.safetensors instead."""
    if not (directory / ".metadata").is_file():
        raise CheckpointError(
            f"{directory.parent} has no {SHARDED_DIR}/ to resume from; start a new run from its "
            "weights with --init_from instead"
        )
    if rows_changed:
        _load_reordered_optimizer(directory, model, optimizer)
        return
    owned = list(_owned_parameters(model, optimizer))
    template = {name: _state_template(inner, param) for name, param, inner in owned}
    state: dict = {"optimizer": template}
    if holds_model(directory):
        state["model"] = model.state_dict()
    with _quiet_single_process():
        safe_dcp_load(state, directory, no_dist=not info.initialized)
    for name, param, inner in owned:
        loaded = template[name]
        # Fused and capturable AdamW keep `step` on the parameter's device; the others on the CPU.
        if "step" in loaded and (inner.defaults.get("fused") or inner.defaults.get("capturable")):
            loaded["step"] = loaded["step"].to(param.device)
        inner.state[param] = loaded


def _load_reordered_optimizer(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | MuonAdamW
) -> None:
    """Optimizer state saved in the other row order: one parameter's full state at a time (never
    the whole), put into the plain order, then this rank's part in the current order."""
    orders, current = tensor_parallel_rows(model), current_rows(model)
    for name, param, inner in _owned_parameters(model, optimizer):
        full = {
            key: torch.zeros((), dtype=torch.float32) if key == "step" else torch.zeros(param.shape)
            for key in _state_keys(inner)
        }
        with _quiet_single_process():  # each rank reads alone: ZeRO-1 ranks own other names
            safe_dcp_load({"optimizer": {name: full}}, directory, no_dist=True)
        loaded = {}
        for key, tensor in full.items():
            if key != "step":
                if not current:  # saved with tensor parallelism: undo its row order
                    tensor = plain_rows(name, tensor, orders)
                local = torch.zeros_like(param)
                fill_from_full(local, tensor.to(local_part(local).device), current.get(name))
                tensor = local
            loaded[key] = tensor
        inner.state[param] = loaded


def full_model_state(model: nn.Module, info: DistInfo, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU of rank 0 (collective when `sharded`); {} elsewhere."""
    if not sharded:
        return model.state_dict() if info.is_main else {}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    rows = current_rows(model)  # files hold the plain row order
    return {name: plain_rows(name, tensor, rows) for name, tensor in state.items()}


def load_model_tensor(directory: Path, name: str, tensor: torch.Tensor) -> None:
    """One whole tensor of the model from a sharded state, in place (one process, e.g. to
    consolidate it a tensor at a time)."""
    with _quiet_single_process():
        safe_dcp_load({"model": {name: tensor}}, directory, no_dist=True)
