"""The loop's balancing hook: nothing for dense models; for MoE models exactly the aux loss and
router-bias update of models/moe.py, with the loads summed over ranks by the parallel side."""

from __future__ import annotations

import torch
from conftest import build, tiny_model

from lmforge.models.moe import moe_aux_loss, update_router_biases
from lmforge.parallel.dist import DistInfo
from lmforge.train.balancing import MoEBalancing, NoBalancing, balancing_hook

V = 97
ONE_PROCESS = DistInfo(0, 0, 1, torch.device("cpu"), None)
MOE = dict(ffn="moe", num_experts=6, experts_per_token=2, moe_ffn_dim=24)


def test_dense_models_get_no_balancing():
    model = build(tiny_model(vocab_size=V)).train()
    hook = balancing_hook(model, ONE_PROCESS)
    assert isinstance(hook, NoBalancing)
    model(torch.randint(0, V, (2, 8)))
    assert hook.extra_loss(model) is None
    assert hook.metrics(model) == {}


def test_moe_hook_is_the_models_aux_loss_and_bias_update():
    torch.manual_seed(0)
    config = tiny_model(
        vocab_size=V, **MOE, moe_scoring="sigmoid", moe_bias_balancing=True, moe_aux_loss_coef=0.01
    )
    model = build(config).train()
    hook = balancing_hook(model, ONE_PROCESS)
    assert isinstance(hook, MoEBalancing)
    model(torch.randint(0, V, (2, 16)))
    assert torch.equal(hook.extra_loss(model), moe_aux_loss(model))
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    hook.after_step(model)
    ours = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(before[name])
    update_router_biases(model)
    for name, buffer in model.named_buffers():
        assert torch.equal(ours[name], buffer), name
    assert any("selection_bias" in name and buffer.any() for name, buffer in ours.items())
    assert set(hook.metrics(model)) >= {"moe/load_cv"}
