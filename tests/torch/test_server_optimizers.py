"""FedAdagrad, FedYogi (Flower's semantics and defaults) and FedProx: hand-computed steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import aggkit as ak
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
from aggkit_torch.local_training import proximal_term

MOVES = [np.array([0.5, -0.25]), np.array([-0.1, -0.25]), np.array([0.3, 0.0])]  # per round


def _run(config: FedAvgConfig, rounds: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each round every client moves the weight by that round's MOVES: the aggregate moves
    it by the same amount (Flower's delta), so the server step is all that differs."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1, bias=False)
    start = model.weight.detach().double().numpy()[0].copy()
    trainer = None

    def move(model, optimizer, images, labels):
        with torch.no_grad():
            model.weight.add_(torch.from_numpy(MOVES[trainer.round]).float())
        return len(labels)

    x, y = torch.zeros(6, 2), torch.zeros(6, dtype=torch.int64)
    trainer = FederatedTrainer(
        model, ak.mean(), x, y, [range(0, 3), range(3, 6)], config=config, local_update=move
    )
    weights = []
    for _ in range(rounds):
        assert trainer.run_round()["committed"]
        weights.append(model.weight.detach().double().numpy()[0].copy())
    return start, weights


def _flower(start, rule, eta, beta1, beta2, tau, rounds):
    """Flower's FedOpt update (fedopt.py, fedadagrad.py, fedyogi.py), in float64."""
    w, m, v = start.copy(), np.zeros(2), np.zeros(2)
    out = []
    for delta in MOVES[:rounds]:
        m = beta1 * m + (1 - beta1) * delta
        if rule == "adagrad":
            v = v + delta**2
        else:
            v = v - (1.0 - beta2) * delta**2 * np.sign(v - delta**2)
        w = w + eta * m / (np.sqrt(v) + tau)
        out.append(w.copy())
    return out


def test_flower_defaults():
    adagrad = FedAvgConfig(server_optimizer="adagrad")
    assert (adagrad.server_lr, adagrad.server_beta1, adagrad.server_tau) == (0.1, 0.0, 1e-3)
    yogi = FedAvgConfig(server_optimizer="yogi")
    assert (yogi.server_lr, yogi.server_beta1, yogi.server_beta2, yogi.server_tau) == (
        0.01,
        0.9,
        0.99,
        1e-3,
    )
    assert FedAvgConfig().server_lr == 1.0 == FedAvgConfig(server_optimizer="adam").server_lr
    with pytest.raises(ValueError, match="server_beta2"):
        FedAvgConfig(server_optimizer="yogi", server_beta2=1.0)


@pytest.mark.parametrize(
    ("rule", "settings"),
    [
        ("adagrad", {}),
        ("yogi", {}),
        ("adagrad", {"server_lr": 0.5, "server_tau": 0.01, "server_beta1": 0.5}),
        ("yogi", {"server_lr": 0.2, "server_beta1": 0.5, "server_beta2": 0.9, "server_tau": 0.1}),
    ],
)
def test_adaptive_server_optimizers_take_flowers_steps(rule, settings):
    config = FedAvgConfig(clients_per_round=2, server_optimizer=rule, **settings)
    start, weights = _run(config, rounds=3)
    expected = _flower(
        start,
        rule,
        config.server_lr,
        config.server_beta1,
        config.server_beta2 or 0.0,
        config.server_tau,
        rounds=3,
    )
    for ours, theirs in zip(weights, expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    # Not FedAvg: the step is eta * m / (sqrt(v) + tau), not the clients' move.
    assert not np.allclose(weights[0], start + MOVES[0], atol=1e-3)


def test_fedprox_adds_the_proximal_gradient():
    """Two SGD steps on the loss c.w: w1 = w0 - lr c (the term is 0 at w0), then
    w2 = w1 - lr (c + mu (w1 - w0)) = w0 - 2 lr c + lr^2 mu c."""
    c, lr, mu = torch.tensor([[2.0, -1.0]]), 0.1, 0.5

    def two_steps(model, optimizer, images, labels):
        for _ in range(2):
            optimizer.zero_grad()
            (model.weight * c).sum().backward()
            optimizer.step()
        return len(labels)

    results = {}
    for m in (0.0, mu):
        torch.manual_seed(0)
        model = nn.Linear(2, 1, bias=False)
        w0 = model.weight.detach().double().clone()
        config = FedAvgConfig(clients_per_round=1, client_lr=lr, client_momentum=0.0, proximal_mu=m)
        trainer = FederatedTrainer(
            model,
            ak.mean(),
            torch.zeros(4, 2),
            torch.zeros(4, dtype=torch.int64),
            [range(4)],
            config=config,
            local_update=two_steps,
        )
        trainer.run_round()
        results[m] = model.weight.detach().double()
        # The hooks are gone after the client: the worker's gradient is the loss's alone.
        trainer.worker.zero_grad()
        with torch.no_grad():
            trainer.worker.weight.add_(1.0)
        (trainer.worker.weight * c).sum().backward()
        torch.testing.assert_close(trainer.worker.weight.grad, c)
    c64 = c.double()
    torch.testing.assert_close(results[0.0], w0 - 2 * lr * c64, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        results[mu], w0 - 2 * lr * c64 + lr * lr * mu * c64, rtol=1e-6, atol=1e-7
    )


def test_proximal_term_leaves_frozen_parameters_and_mu_zero_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    term = proximal_term(model, 0.3)
    assert len(term._handles) == 2  # the second layer's weight and bias only
    term.remove()
    assert proximal_term(model, 0.0)._handles == []
    with pytest.raises(ValueError, match="mu"):
        proximal_term(model, -1.0)
