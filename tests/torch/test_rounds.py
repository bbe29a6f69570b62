"""The round core in FederatedTrainer: untrusted client counts, dropped clients, transactions.

The same core runs in the Flower strategy (``tests/flower/test_strategy.py``); here the clients
are a ``local_update`` function on a small synthetic problem, so every case takes milliseconds.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import aggkit as ak
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
from aggkit_torch.params import parameters_to_vector
from aggkit_torch.rounds import MAX_EXAMPLES, RoundCore

SIZES = [6, 8, 10, 12]


def _trainer(counts, aggregator=None, *, poison=None, **config) -> FederatedTrainer:
    """Clients 0-3 hold SIZES examples; client i reports ``counts(i, size)``.

    ``poison(i, model)`` may then change client i's trained weights.
    """
    torch.manual_seed(0)
    x, y = torch.randn(sum(SIZES), 1, 28, 28), torch.randint(0, 10, (sum(SIZES),))
    bounds = np.cumsum([0, *SIZES])
    parts = [range(a, b) for a, b in itertools.pairwise(bounds)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))

    def local_update(model, optimizer, images, labels):
        client = SIZES.index(len(images))
        optimizer.zero_grad()
        nn.functional.nll_loss(model(images), labels).backward()
        optimizer.step()
        if poison is not None:
            poison(client, model)
        return counts(client, len(images))

    settings = {"clients_per_round": 4, "seed": 1, "client_lr": 0.5, "channels_last": False}
    return FederatedTrainer(
        model,
        aggregator if aggregator is not None else ak.mean(),
        x,
        y,
        parts,
        config=FedAvgConfig(**{**settings, **config}),
        local_update=local_update,
    )


def _spy(trainer):
    seen = []
    original = trainer.process.next

    def spy(state, batch, weights=None):
        seen.append((batch.matrix.copy(), None if weights is None else weights.copy()))
        return original(state, batch, weights)

    trainer.process.next = spy
    return seen


def _by_client(trainer, values) -> dict[str, float]:
    return dict(zip(trainer.history[-1]["clients"], values, strict=True))


def test_one_client_cannot_take_over_through_its_count():
    def counts(client, size):
        return 1e12 if client == 1 else size

    trusting = _trainer(counts, client_weighting="num_examples")
    seen = _spy(trusting)
    trusting.run_round()
    assert _by_client(trusting, seen[0][1])["1"] == 1e12  # the attack, when counts are trusted
    default = _trainer(counts)
    seen = _spy(default)
    metrics = default.run_round()
    # Capped at what the trainer knows client 1 processes on its partition: its 8 examples.
    assert _by_client(default, seen[0][1]) == {"0": 6, "1": 8, "2": 10, "3": 12}
    assert metrics["capped_clients"] == 1 and metrics["examples"] == 36 and metrics["committed"]


@pytest.mark.parametrize(
    "count",
    [0, -1, math.nan, math.inf, 1e300, MAX_EXAMPLES + 2, "12", None, True],
    ids=repr,
)
def test_a_client_with_an_unusable_count_is_dropped_and_the_rest_aggregated(count):
    trainer = _trainer(lambda client, size: count if client == 2 else size)
    seen = _spy(trainer)
    metrics = trainer.run_round()
    assert metrics["committed"] and sorted(metrics["clients"]) == ["0", "1", "3"]
    [dropped] = metrics["dropped"]
    assert dropped["client"] == "2" and "count" in dropped["reason"]
    matrix, weights = seen[0]
    assert matrix.shape[0] == 3 and sorted(weights) == [6, 8, 12]


def _snapshot(trainer):
    return (
        parameters_to_vector(trainer.model).copy(),
        copy.deepcopy(trainer.server_optimizer.state_dict()),
        trainer.aggregator_state,
    )


def _assert_unchanged(trainer, snapshot):
    params, optimizer, state = snapshot
    np.testing.assert_array_equal(parameters_to_vector(trainer.model), params)
    now = trainer.server_optimizer.state_dict()["state"]
    assert now.keys() == optimizer["state"].keys()
    for key, entry in optimizer["state"].items():
        assert torch.equal(now[key]["momentum_buffer"], entry["momentum_buffer"])
    assert trainer.aggregator_state is state


@pytest.mark.parametrize("case", ["zero-counts", "all-nonfinite", "step-overflows"])
def test_a_failed_round_leaves_model_optimizer_and_state_unchanged(case):
    bad = {"on": False}

    def counts(client, size):
        return 0 if bad["on"] and case == "zero-counts" else size

    def poison(client, model):
        if bad["on"] and case == "all-nonfinite":
            with torch.no_grad():
                model[1].weight.fill_(math.nan)
        if bad["on"] and case == "step-overflows":  # finite updates whose step is not
            with torch.no_grad():
                model[1].weight.fill_(-3e38)

    trainer = _trainer(counts, poison=poison, server_momentum=0.9, server_lr=1.5)
    trainer.run_round()  # a good round: the momentum buffer exists
    snapshot = _snapshot(trainer)
    bad["on"] = True
    metrics = trainer.run_round()
    assert not metrics["committed"] and metrics["round"] == 2
    expected = {
        "zero-counts": "no usable client update",
        "all-nonfinite": "no usable client update",
        "step-overflows": "the server step would make the model non-finite",
    }[case]
    assert metrics["failure"] == expected
    _assert_unchanged(trainer, snapshot)
    bad["on"] = False
    assert trainer.run_round()["committed"]  # the run goes on


def test_an_update_the_aggregator_refuses_is_dropped_not_fatal():
    # The process itself refuses row 1 (InvalidUpdateError naming it): that client is dropped
    # and the round aggregated again without it.
    trainer = _trainer(lambda client, size: size)
    original = trainer.process.next
    calls = []

    def refuse_first(state, batch, weights=None):
        calls.append(batch.num_clients)
        if len(calls) == 1:
            raise ak.InvalidUpdateError("refused for the test", client=1)
        return original(state, batch, weights)

    trainer.process.next = refuse_first
    metrics = trainer.run_round()
    assert calls == [4, 3] and metrics["committed"] and len(metrics["clients"]) == 3
    assert "refused for the test" in metrics["dropped"][0]["reason"]


def test_round_core_rejects_bad_policies():
    process = ak.mean().create(ak.Layout({"w": ak.TensorSpec((2,), np.float32)}))
    with pytest.raises(ValueError, match="client_weighting must be one of"):
        RoundCore(process, weighting="trusted")
    for cap in (0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="weight_cap"):
            RoundCore(process, weight_cap=cap)
    with pytest.raises(ValueError, match="weight_cap"):
        FedAvgConfig(weight_cap=0.0)
