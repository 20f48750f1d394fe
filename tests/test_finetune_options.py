"""Fine-tuning options of the SFT stage (issue 20's first item): the tri-stage schedule and layer-wise LR decay,
against values computed by hand."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from lit_modules.optim import optimizers_with_schedule


def factors(scheduler: dict, steps: list[int], total: int = 100) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = optimizers_with_schedule(optimizer, scheduler, total)["lr_scheduler"]["scheduler"]
    return [schedule.lr_lambdas[0](step) for step in steps]


def test_tri_stage_warms_up_holds_and_decays_exponentially():
    scheduler = {
        "name": "tri_stage",
        "warmup_steps": 10,
        "hold_steps": 40,
        "init_ratio": 0.01,
        "final_ratio": 0.05,
    }
    got = factors(scheduler, [0, 5, 10, 49, 50, 75, 100, 150])
    # warm-up 0.01 -> 1 over 10 steps; hold to step 50; then 0.05 ** ((step - 50) / 50)
    expected = [0.01, 0.01 + 0.99 * 0.5, 1.0, 1.0, 1.0, 0.05**0.5, 0.05, 0.05]
    assert got == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown scheduler"):
        factors({"name": "linear"}, [0])


def test_cosine_stays_the_default():
    got = factors({"warmup_steps": 10, "min_ratio": 0.1}, [0, 10, 55, 100])
    assert got == pytest.approx([0.1, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.1])


def test_layer_wise_decay_gives_each_encoder_layer_its_rate():
    from lit_modules.ctc_asr import CTCASRModule
    from research.asr.ctc import ConformerCTC
    from research.encoder import ConformerEncoder

    encoder = ConformerEncoder(d_model=16, num_layers=3, num_heads=2, ffn_dim=32, subsampling_channels=4)
    module = CTCASRModule(
        net=ConformerCTC(encoder=encoder),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler={},
        encoder_lr_scale=0.5,
        encoder_layer_decay=0.8,
    )
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    groups = module.configure_optimizers()["optimizer"].param_groups
    layers = list(encoder.conformer.conformer_layers)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    for index, layer in enumerate(layers):  # top layer 0.5e-3, each one below x 0.8
        assert all(rate[id(p)] == pytest.approx(5e-4 * 0.8 ** (2 - index)) for p in layer.parameters())
    assert all(rate[id(p)] == pytest.approx(5e-4 * 0.8**3) for p in encoder.subsampling.parameters())
    head = [p for p in module.parameters() if id(p) not in {id(q) for q in encoder.parameters()}]
    assert head and all(rate[id(p)] == 1e-3 for p in head)
    assert len({id(p) for group in groups for p in group["params"]}) == sum(1 for _ in module.parameters())
