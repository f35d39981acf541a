"""What a client computes besides training: FedProx's proximal term, FedMAP's self-assessment, its modalities."""

from dataclasses import replace

import numpy as np
import torch

from fedmm.backends.fusion import FusionBackend
from fedmm.client.client import ClientTrainer
from fedmm.config import load_settings
from fedmm.data.tasks import load_task
from fedmm.experiment.assemble import travelling_keys
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.fedmap import label_statistics, local_split
from fedmm.fl.update import Update
from fedmm.params import params_to_bytes
from fedmm.fl.strategy import STRATEGIES
from fedmm.modelops import get_params


def _setup(*over):
    s = load_settings(["task=synthetic", "model=fusion_tiny", "task.num_train=96", *over])
    data = load_task(s.task, 0)
    backend = FusionBackend(s.model, data.train.num_labels, data.train.multilabel)
    return backend, backend.build_model(seed=0), data.train


CONFIG = FitInstructions(round=1, seed=3, lr=0.01, local_epochs=2, batch_size=16, weight_decay=0.0)


def test_local_split_is_fixed_and_disjoint_and_label_statistics_by_hand():
    _, _, data = _setup()
    tr, va = local_split(data, 0.25, seed=3, cid=1)
    tr2, va2 = local_split(data, 0.25, seed=3, cid=1)
    assert len(va) == 24 and len(tr) == 72 and np.array_equal(va.labels, va2.labels)
    assert local_split(data.subset(np.arange(2)), 0.25, 3, 1)[1] is None  # too small to spare an example
    balanced = data.subset(np.concatenate([np.flatnonzero(data.labels == c)[:2] for c in range(3)]))
    stats = label_statistics(balanced)
    assert stats["imbalance_ratio"] == 2 / 6
    p = np.array([2, 2, 2] + [0] * (data.num_labels - 3)) / 6
    nz = p[p > 0]
    assert stats["diversity"] == -(nz * np.log(nz)).sum() / np.log(data.num_labels)


def test_client_reports_fedmap_statistics_and_its_real_modalities():
    backend, model, data = _setup()
    text_only = data.with_modalities(frozenset({"text"}))
    payload = params_to_bytes(get_params(model, backend.trainable_keys(model)))
    cfg = replace(CONFIG, strategy="fedmap", strategy_options={"val_fraction": 0.25, "score_metric": "accuracy"})
    wire = cfg.to_json()  # as a remote runtime delivers them
    up = Update.from_bytes(ClientTrainer(backend, model, progress=False).fit_bytes(2, text_only, payload, wire))
    assert up.modalities == frozenset({"text"})
    assert up.num_examples == 72  # the held-out quarter is not trained on
    for key in ("f1_before", "p_k", "c_k", "val_loss", "grad_norm", "diversity", "imbalance_ratio"):
        assert np.isfinite(up.metrics[key]), key
    assert up.metrics["c_k"] == up.metrics["p_k"] - up.metrics["f1_before"]
    assert up.metrics["grad_norm"] > 0
    assert not any(backend.key_modality(k) == "image" for k in up.params)


def test_proximal_term_keeps_the_client_near_the_global_model():
    drift = {}
    for mu in (0.0, 10.0):
        backend, model, data = _setup()
        keys = backend.trainable_keys(model)
        start = get_params(model, keys)
        trainer = ClientTrainer(backend, model, progress=False)
        up = trainer.fit(
            0, data, params_to_bytes(start), replace(CONFIG, strategy="fedprox", strategy_options={"prox_mu": mu})
        )
        drift[mu] = sum(float(np.sum((up.params[k] - start[k]) ** 2)) for k in keys if "running" not in k)
    assert drift[10.0] < 0.8 * drift[0.0]


def test_ffa_lora_freezes_a_so_it_neither_trains_nor_travels():
    backend, model, data = _setup("model.lora_r=2")
    strategy = STRATEGIES.get("ffa_lora").factory(STRATEGIES.get("ffa_lora").config_cls())
    keys = travelling_keys(backend, model, strategy)
    assert any(".lora_B." in k for k in keys) and not any(".lora_A." in k for k in keys)
    a_before = {k: v.clone() for k, v in model.state_dict().items() if ".lora_A." in k}
    up = ClientTrainer(backend, model, progress=False).fit(0, data, params_to_bytes(get_params(model, keys)), CONFIG)
    assert set(up.params) == set(keys)
    assert all(np.array_equal(model.state_dict()[k].numpy(), v.numpy()) for k, v in a_before.items())


def _distance(a, b, keys):
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in keys)))


def test_dittos_lambda_pulls_the_personal_model_toward_the_global_one_it_was_sent():
    """Ditto: the personal model trains on lambda/2 ||v - w||^2 beside its loss, w being the global model of *this*
    round. Plain SGD so that no optimizer rescales the pull. A larger lambda keeps it nearer; in round 2 it is pulled
    toward the new global (not toward where it started), continues from its own copy (it does not restart from the
    global), and the update the site sends is Ditto-free."""
    near, sent, far = {}, {}, {}
    for lam in (0.0, 1.0, 10.0):
        backend, model, data = _setup()
        keys = [k for k in backend.trainable_keys(model) if "running" not in k and "num_batches" not in k]
        g1 = get_params(model, backend.trainable_keys(model))
        trainer = ClientTrainer(backend, model, progress=False)
        ins = replace(CONFIG, personalize="ditto", personal_lam=lam, optimizer="sgd")
        sent[lam] = trainer.fit(0, data, params_to_bytes(g1), ins).params
        p1 = trainer.state.load("personal", 0, 2)
        rng = np.random.default_rng(0)  # the next round's global model, somewhere else
        g2 = {k: (v + 0.02 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in g1.items()}
        trainer.fit(0, data, params_to_bytes(g2), replace(ins, round=2))
        p2 = trainer.state.load("personal", 0, 3)
        near[lam] = _distance(p1, g1, keys)
        far[lam] = (_distance(p2, g2, keys), _distance(p1, g2, keys))
    assert near[10.0] < near[1.0] < near[0.0] and near[10.0] < 0.5 * near[0.0]
    assert far[10.0][0] < far[1.0][0] < far[0.0][0] and far[10.0][0] < 0.5 * far[10.0][1]
    assert far[0.0][0] > 0.9 * far[0.0][1]  # without the pull it keeps training its own copy, far from the global
    assert all(np.array_equal(sent[lam][k], sent[0.0][k]) for lam in sent for k in sent[0.0])


def test_each_client_and_round_trains_with_its_own_seed_and_the_same_one_again():
    """Batch order and dropout are seeded by (seed, round, client): two sites with the same data and model move
    differently, so do two rounds of one site; the same site and round repeat exactly."""

    def update(cid, rnd):
        backend, model, data = _setup()
        payload = params_to_bytes(get_params(model, backend.trainable_keys(model)))
        return ClientTrainer(backend, model, progress=False).fit(cid, data, payload, replace(CONFIG, round=rnd)).params

    first = update(0, 1)
    same = lambda a, b: all(np.array_equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(first, update(0, 1))
    assert not same(first, update(1, 1)) and not same(first, update(0, 2))


def test_a_site_without_test_data_answers_an_evaluation_with_no_figures():
    """client_eval at a site that holds no test rows: no examples, no figures, no tensors (the server leaves it out
    of the per-site summary rather than counting one empty example)."""
    backend, model, data = _setup()
    payload = params_to_bytes(get_params(model, backend.trainable_keys(model)))
    trainer = ClientTrainer(backend, model, progress=False)
    ins = replace(CONFIG, task="evaluate")
    for test in (None, data.subset(np.arange(0))):
        up = trainer.evaluate(0, data, test, payload, ins)
        assert (up.num_examples, up.metrics, up.params) == (0, {}, {})
    up = trainer.evaluate(0, data, data.subset(np.arange(10)), payload, ins)
    assert up.num_examples == 10 and np.isfinite(up.metrics["loss"])


def test_the_client_trains_with_its_instructions_and_attacks_only_as_configured():
    """grad_accum_steps reaches the loop (half the steps with SGD: another model), the reply carries the training
    loss, and a configured attacker scales its delta from start_round on while the others stay honest."""
    from fedmm.config.schema import AttackConfig

    backend, model, data = _setup()  # one model: every fit starts from the same sent parameters
    start = get_params(model, backend.trainable_keys(model))

    def fit(cid=0, rnd=1, attack=None, **kw):
        trainer = ClientTrainer(backend, model, progress=False, attack=attack)
        up = trainer.fit(cid, data, params_to_bytes(start), replace(CONFIG, round=rnd, optimizer="sgd", **kw))
        return start, up

    start, plain = fit()
    assert np.isfinite(plain.metrics["train_loss"]) and plain.metrics["batches"] == 12
    _, halved = fit(grad_accum_steps=2)
    assert halved.metrics["batches"] == 12 and not all(np.array_equal(plain.params[k], halved.params[k]) for k in start)
    attack = AttackConfig(name="scale", clients=[1], scale=3.0, start_round=2)
    for cid, rnd, factor in ((1, 2, 3.0), (1, 1, 1.0), (0, 2, 1.0)):
        _, up = fit(cid, rnd, attack)
        _, honest = fit(cid, rnd)
        k = "classifier.weight"
        np.testing.assert_allclose(
            up.params[k] - start[k], factor * (honest.params[k] - start[k]), rtol=1e-4, atol=1e-6
        )
    noisy = AttackConfig(name="gaussian", clients=[1], std=0.5)  # seeded by the client's seed: the same each time
    assert all(np.array_equal(fit(1, 1, noisy)[1].params[k], fit(1, 1, noisy)[1].params[k]) for k in start)


def test_error_feedback_carries_what_compression_lost_into_the_next_round():
    from fedmm.config.schema import CompressionConfig

    backend, model, data = _setup()
    start = get_params(model, backend.trainable_keys(model))
    ins = replace(CONFIG, compression=CompressionConfig(kind="int8", error_feedback=True))

    def round_two(trainer):
        return trainer.fit(0, data, params_to_bytes(start), replace(ins, round=2)).params

    trainer = ClientTrainer(backend, model, progress=False)
    trainer.fit(0, data, params_to_bytes(start), ins)
    residual = trainer.state.load_residual(0, 2)  # what round 1's int8 message lost
    assert residual is not None and any(np.abs(v).max() > 0 for v in residual.values())
    carried = round_two(trainer)
    without = round_two(ClientTrainer(backend, model, progress=False))  # the same round without a residual
    assert not all(np.array_equal(carried[k], without[k]) for k in carried)


def test_qffl_clients_report_the_received_models_loss_on_their_training_data_before_training():
    """q-FFL's F_k is the loss of the model the client received, on its own training data, before it trains: not
    the loss during training (train_loss), nor the loss after it."""
    backend, model, data = _setup()
    received = {k: v + 0.05 for k, v in get_params(model, backend.trainable_keys(model)).items()}
    cfg = replace(CONFIG, strategy="qfedavg", eval_metrics=["accuracy"])
    up = ClientTrainer(backend, model, progress=False).fit(0, data, params_to_bytes(received), cfg.to_json())
    _, fresh, _ = _setup()
    fresh.load_state_dict({**fresh.state_dict(), **{k: torch.from_numpy(v) for k, v in received.items()}})
    assert up.metrics["qffl_loss"] == backend.evaluate(fresh, data, ("accuracy",), CONFIG.batch_size)["loss"]
    assert up.metrics["qffl_loss"] != up.metrics["train_loss"]


def test_fednova_clients_report_their_optimizer_steps_not_their_batches():
    """96 examples in batches of 16 with 2 batches per step: 3 optimizer steps per epoch, 6 in 2 epochs (12 batches)."""
    backend, model, data = _setup()
    payload = params_to_bytes(get_params(model, backend.trainable_keys(model)))
    cfg = replace(CONFIG, strategy="fednova", grad_accum_steps=2)
    up = ClientTrainer(backend, model, progress=False).fit(0, data, payload, cfg)
    assert up.metrics["fednova_steps"] == 6 and up.metrics["batches"] == 12
