"""Buffers (BatchNorm statistics), FedBN, dtypes and frozen parameters in the trainer; and the
two trainer behaviours pinned at trainer level (uniform weighting, server momentum)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import aggkit as ak
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
from aggkit_torch.local_training import evaluate, train_local
from aggkit_torch.params import aggregated_tensors, buffer_names, model_layout

SIZES = (40, 80, 120)  # three clients of different sizes: weights 1 : 2 : 3


def _bn_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3), nn.LogSoftmax(dim=1)
    ).to(dtype)


def _data(seed: int = 0, n: int = sum(SIZES)) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes far from the origin: BatchNorm's statistics decide the accuracy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    x = 20.0 + 3.0 * centers[labels] + 0.3 * torch.randn(n, 4, generator=g)
    return x, labels


def _parts() -> list[range]:
    bounds = np.cumsum((0, *SIZES))
    return [range(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


class Recorder:
    """A ``local_update`` that trains as the trainer would and keeps each client's final state."""

    def __init__(self, epochs: int = 1):
        self.epochs = epochs
        self.states: list[dict[str, torch.Tensor]] = []
        self.starts: list[dict[str, torch.Tensor]] = []
        self.counts: list[int] = []

    def __call__(self, model, optimizer, images, labels):
        self.starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        result = train_local(
            model, optimizer, images, labels, range(len(labels)), batch_size=16, epochs=self.epochs
        )
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.counts.append(result.num_examples)
        return result.num_examples


def _trainer(model, recorder, **config) -> FederatedTrainer:
    x, y = _data()
    settings = {
        "clients_per_round": 3,
        "client_weighting": "num_examples",
        "client_lr": 0.05,
        "seed": 0,
        **config,
    }
    return FederatedTrainer(
        model,
        ak.mean(),
        x,
        y,
        _parts(),
        *_data(seed=1, n=300),
        config=FedAvgConfig(**settings),
        local_update=recorder,
    )


def _weighted_mean(states, counts, key) -> np.ndarray:
    values = np.stack([s[key].double().numpy() for s in states])
    weights = np.asarray(counts, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), values, axes=1)


def test_layout_holds_parameters_and_floating_buffers_never_counters():
    model = _bn_model()
    names = [name for name, _ in aggregated_tensors(model)]
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "3.weight",
        "3.bias",
    ]
    assert "1.num_batches_tracked" not in [n for n, _ in aggregated_tensors(model)]
    assert [n for n, _ in aggregated_tensors(model, buffers=False)] == [
        n for n in names if "running" not in n
    ]
    assert buffer_names(model) == ["1.running_mean", "1.running_var"]


def test_server_running_statistics_are_the_weighted_mean_of_the_clients():
    recorder = Recorder()
    trainer = _trainer(_bn_model(), recorder)
    metrics = trainer.run_round()
    assert metrics["committed"]
    assert sorted(recorder.counts) == list(SIZES)
    server = trainer.model.state_dict()
    for key in ("1.running_mean", "1.running_var", "0.weight", "3.bias"):
        expected = _weighted_mean(recorder.states, recorder.counts, key)
        # float32 arithmetic: server - mean(server - client) against the float64 mean.
        np.testing.assert_allclose(server[key].numpy(), expected, rtol=2e-6, atol=2e-6)
    for state in recorder.states:  # the clients moved their statistics a long way
        assert not torch.allclose(state["1.running_mean"], torch.zeros(6), atol=1.0)
    # num_batches_tracked: the server's own (0); each client started from it.
    assert int(server["1.num_batches_tracked"]) == 0
    assert all(int(s["1.num_batches_tracked"]) == 0 for s in recorder.starts)
    batches = {40: 3, 80: 5, 120: 8}
    assert [int(s["1.num_batches_tracked"]) for s in recorder.states] == [
        batches[n] for n in recorder.counts
    ]


def test_buffers_skip_the_server_optimizer():
    """With server momentum the parameters move by the optimizer's step, buffers by the mean."""
    recorder = Recorder()
    trainer = _trainer(_bn_model(), recorder, server_momentum=0.9, server_lr=0.5)
    for _ in range(2):
        trainer.run_round()
        last = slice(len(recorder.states) - 3, len(recorder.states))
        expected = _weighted_mean(recorder.states[last], recorder.counts[last], "1.running_var")
        np.testing.assert_allclose(
            trainer.model.state_dict()["1.running_var"].numpy(), expected, rtol=2e-6, atol=2e-6
        )


def test_fedbn_keeps_statistics_local_and_the_servers_untouched():
    recorder = Recorder()
    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, recorder, buffers="local")
    assert trainer.layout.size == model_layout(model, buffers=False).size
    trainer.run_round()
    trainer.run_round()
    server = trainer.model.state_dict()
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(server[key], before[key])
    assert not torch.equal(server["0.weight"], before["0.weight"])  # parameters aggregated
    # Round 2: each client starts from its own round-1 statistics, not the server's.
    first, second = recorder.states[:3], recorder.starts[3:]
    order1, order2 = trainer.history[0]["clients"], trainer.history[1]["clients"]
    for i, name in enumerate(order2):
        own = first[order1.index(name)]
        assert torch.equal(second[i]["1.running_mean"], own["1.running_mean"])
    # ... and the run resumes with them.
    again = _trainer(_bn_model(), Recorder(), buffers="local")
    again.load_state_dict(trainer.state_dict())
    assert set(again.local_buffers) == {0, 1, 2}


def test_aggregated_buffers_evaluate_as_the_numpy_reference_and_beat_stale_statistics():
    """Three rounds of FedAvg on the BatchNorm model: the trainer's global model is a plain NumPy
    FedAvg of the clients' whole floating state (so it tests as well), and it tests far better
    than the same parameters with the server's initial statistics (what not aggregating the
    buffers left before)."""
    recorder = Recorder(epochs=3)
    trainer = _trainer(_bn_model(), recorder)
    reference = {k: v.double().numpy() for k, v in trainer.model.state_dict().items()}
    for _ in range(3):
        trainer.run_round()
        last = slice(len(recorder.states) - 3, len(recorder.states))
        for key in reference:
            if "num_batches" not in key:
                reference[key] = _weighted_mean(recorder.states[last], recorder.counts[last], key)
    ours = trainer.evaluate()[0]
    numpy_model = _bn_model()
    numpy_model.load_state_dict(
        {k: torch.from_numpy(v).to(torch.float32) for k, v in reference.items()}
        | {"1.num_batches_tracked": torch.tensor(0)}
    )
    x, y = _data(seed=1, n=300)
    assert ours >= evaluate(numpy_model, x, y).accuracy - 1 / 300
    stale = _bn_model()
    stale.load_state_dict(
        {k: v for k, v in trainer.model.state_dict().items() if "running" not in k}, strict=False
    )
    assert ours > 0.9 and evaluate(stale, x, y).accuracy < 0.6


@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [(torch.bfloat16, 2**-7), (torch.float16, 2**-10), (torch.float64, 1e-12)],
)
def test_a_model_of_any_floating_dtype_round_trips_through_aggregation(dtype, rtol):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).to(dtype)

    def shift(model, optimizer, images, labels):
        # A deterministic "training": each client moves every tensor by its own amount.
        k = len(labels)
        with torch.no_grad():
            for _, t in aggregated_tensors(model):
                t.add_(
                    torch.full_like(t, 0.01 * k)
                    + 0.001 * torch.arange(t.numel(), dtype=torch.float64).view(t.shape)
                )
        return k

    start = {n: t.detach().double().clone() for n, t in aggregated_tensors(model)}
    x, y = torch.zeros(sum(SIZES), 5, dtype=dtype), torch.zeros(sum(SIZES), dtype=torch.int64)
    trainer = FederatedTrainer(
        model,
        ak.mean(),
        x,
        y,
        _parts(),
        config=FedAvgConfig(clients_per_round=3, client_weighting="num_examples"),
        local_update=shift,
    )
    expected_dtype = np.float64 if dtype == torch.float64 else np.float32
    assert trainer.layout.dtype == expected_dtype
    assert trainer.run_round()["committed"]
    mean_k = sum(k * k for k in SIZES) / sum(SIZES)
    for name, t in aggregated_tensors(trainer.model):
        assert t.dtype == dtype
        arange = 0.001 * torch.arange(t.numel(), dtype=torch.float64).view(t.shape)
        expected = start[name] + 0.01 * mean_k + arange
        np.testing.assert_allclose(
            t.detach().double().numpy(), expected.numpy(), rtol=rtol, atol=rtol
        )


def test_frozen_parameters_are_left_alone():
    model = _bn_model()
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()

    def tamper(model, optimizer, images, labels):
        with torch.no_grad():
            model[0].weight.add_(1.0)  # a client changing a frozen tensor is ignored
            model[3].weight.add_(1.0)
        return len(labels)

    trainer = _trainer(model, tamper)
    assert "['0.weight']" not in trainer.layout.paths
    trainer.run_round()
    assert torch.equal(trainer.model[0].weight, frozen)
    assert not torch.equal(trainer.model[3].weight, _bn_model()[3].weight)


# -- two trainer behaviours pinned at trainer level ---------------------------------------------


def test_uniform_weighting_gives_a_weighted_aggregator_weight_one_per_client(monkeypatch):
    trainer = _trainer(_bn_model(), Recorder(), client_weighting="uniform")
    seen = []
    process_type = type(trainer.process)
    original = process_type.next

    def spy(self, state, batch, weights=None):
        seen.append(np.asarray(weights, dtype=np.float64).copy())
        return original(self, state, batch, weights)

    monkeypatch.setattr(process_type, "next", spy)
    assert trainer.process.is_weighted
    trainer.run_round()
    [weights] = seen
    np.testing.assert_array_equal(weights, np.ones(3))  # not the counts 40, 80, 120


def test_server_momentum_carries_the_previous_rounds_update():
    """FedAvgM by hand: v1 = u1, w1 = w0 - lr v1; v2 = m v1 + u2, w2 = w1 - lr v2, where the
    update u is global - mean(trained); every client adds a fixed amount, so u = -c."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    w0 = model.weight.detach().double().clone()

    def step(model, optimizer, images, labels):
        with torch.no_grad():
            model.weight.add_(0.25)
        return len(labels)

    x, y = torch.zeros(sum(SIZES), 3), torch.zeros(sum(SIZES), dtype=torch.int64)
    config = FedAvgConfig(clients_per_round=3, server_lr=0.5, server_momentum=0.9)
    trainer = FederatedTrainer(model, ak.mean(), x, y, _parts(), config=config, local_update=step)
    trainer.run_round()
    np.testing.assert_allclose(model.weight.detach().double(), w0 + 0.5 * 0.25, rtol=1e-6)
    trainer.run_round()
    expected = w0 + 0.5 * 0.25 + 0.5 * (0.9 * 0.25 + 0.25)
    np.testing.assert_allclose(model.weight.detach().double(), expected, rtol=1e-6)
