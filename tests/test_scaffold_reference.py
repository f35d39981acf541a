"""SCAFFOLD's client side against NVFlare's own `PTScaffoldHelper` (nvflare.app_opt.pt.scaffold, installed with
nvflare): the same model, data, batch order and learning rate, from the same c and c_i, give the same trained model
and the same control variates (to float rounding), over two rounds with fedmm's optimizers. NVFlare's loop is the
one its examples run: zero_grad, backward, optimizer step, `model_update`, and `terms_update` after the epochs."""

import copy

import numpy as np
import pytest
import torch
from nvflare.app_opt.pt.scaffold import PTScaffoldHelper
from test_train_loop import TextLengthBackend, _data

from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.base import LocalRound
from fedmm.fl.strategy.scaffold import ControlVariates
from fedmm.modelops import batch_indices
from fedmm.train.loop import make_optimizer, train_epochs

EPOCHS, BATCH, LR = 2, 8, 0.05


def nvflare_round(model, backend, data, c_global, c_local, optimizer_name, seed):
    """One round as NVFlare's SCAFFOLD client trains: (the trained model, the new c_i, delta c_i)."""
    helper = PTScaffoldHelper()
    helper.init(model)
    helper.load_global_controls({k: torch.as_tensor(v) for k, v in c_global.items()})
    helper.c_local.load_state_dict({k: torch.as_tensor(v) for k, v in c_local.items()})
    global_model = copy.deepcopy(model)
    c_g, c_l = helper.get_params()
    opt = make_optimizer(model, LR, 0.0, optimizer_name)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(EPOCHS):
        for idx in batch_indices(len(data), BATCH, rng):
            opt.zero_grad()
            loss, _ = backend.loss(model, backend.collate(data, idx))
            loss.backward()
            opt.step()
            helper.model_update(model, LR, c_g, c_l)
    helper.terms_update(model, LR, c_g, c_l, global_model)
    c_new = {k: v.numpy() for k, v in helper.c_local.state_dict().items()}
    return model, c_new, helper.get_delta_controls()


def fedmm_round(model, backend, data, c_global, c_local, optimizer_name, seed):
    kept = {}
    ins = FitInstructions(round=1, seed=0, lr=LR, local_epochs=EPOCHS, batch_size=BATCH, weight_decay=0.0)
    run = LocalRound(
        cid=0, model=model, train=data, val=None, instructions=ins, score=None,
        load_state=lambda kind: c_local, save_state=lambda kind, p: kept.update(p), from_server=c_global,
    )  # fmt: skip
    hook = ControlVariates({})
    hook.before_training(run)
    train_epochs(
        model, backend, data, epochs=EPOCHS, batch_size=BATCH, lr=LR, weight_decay=0.0, seed=seed, progress=False,
        optimizer_name=optimizer_name, on_step=hook.on_step, after_step=hook.after_step,
    )  # fmt: skip
    hook.after_training(run)
    return model, kept, run.to_server


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_scaffold_client_matches_nvflares_helper_over_two_rounds(optimizer_name):
    backend, data = TextLengthBackend(None, 2, False), _data(60)
    start = backend.build_model(seed=3)
    names = [n for n, _ in start.named_parameters()]
    rng = np.random.default_rng(5)
    c = {n: np.zeros(p.shape, np.float32) for n, p in start.named_parameters()}
    c_i = {n: v.copy() for n, v in c.items()}
    ours, theirs = copy.deepcopy(start), copy.deepcopy(start)
    for rnd in (1, 2):
        theirs, c_theirs, dc_theirs = nvflare_round(theirs, backend, data, c, c_i, optimizer_name, seed=rnd)
        ours, c_ours, dc_ours = fedmm_round(ours, backend, data, c, c_i, optimizer_name, seed=rnd)
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert sorted(dc_ours) == sorted(dc_theirs) == sorted(names)
        for n in names:
            np.testing.assert_allclose(c_ours[n], c_theirs[n], rtol=1e-4, atol=1e-5, err_msg=f"round {rnd} c_i {n}")
            np.testing.assert_allclose(dc_ours[n], dc_theirs[n], rtol=1e-4, atol=1e-5, err_msg=f"round {rnd} dc {n}")
        # the next round: this c_i, and a server c that moved (as after other clients' deltas)
        c_i = c_ours
        c = {n: (v + rng.normal(scale=0.05, size=v.shape)).astype(np.float32) for n, v in c.items()}
        assert any(np.abs(v).max() > 0.01 for v in dc_ours.values())  # the variates really changed
