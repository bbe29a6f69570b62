"""Client data as Datasets, partitions of one Dataset and DataLoader factories; test data;
devices (the CPU path, and the accelerator path's arithmetic run on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import aggkit as ak
from aggkit_torch.client_data import DatasetClients, LoaderClients, partition_dataset
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer
from aggkit_torch.local_training import resolve_device
from aggkit_torch.models import MnistCNN
from aggkit_torch.params import parameters_to_vector

PARTS = {"ann": np.arange(0, 70), "bob": np.arange(70, 100), "cy": np.arange(100, 160)}


def _data(n: int = 160, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _config(**changes) -> FedAvgConfig:
    return FedAvgConfig(**{"clients_per_round": 2, "batch_size": 16, "seed": 3, **changes})


def _fit(rounds: int = 2, **kwargs) -> FederatedTrainer:
    torch.manual_seed(0)
    trainer = FederatedTrainer(MnistCNN(), ak.mean(), **kwargs)
    for _ in range(rounds):
        assert trainer.run_round()["committed"]
    return trainer


@pytest.mark.parametrize("changes", [{}, {"local_steps": 7}, {"local_epochs": 2}])
def test_a_partitioned_dataset_trains_the_model_the_tensor_path_trains(changes):
    """Same permutations, same batches: the Dataset path is the fast path's twin."""
    images, labels = _data()
    test = _data(50, seed=1)
    fast = _fit(
        train_images=images,
        train_labels=labels,
        partitions=PARTS,
        test_images=test[0],
        test_labels=test[1],
        config=_config(**changes),
    )
    slow = _fit(
        clients=partition_dataset(TensorDataset(images, labels), PARTS),
        test_data=TensorDataset(*test),
        config=_config(**changes),
    )
    np.testing.assert_array_equal(
        parameters_to_vector(slow.model), parameters_to_vector(fast.model)
    )
    for a, b in zip(fast.history, slow.history, strict=True):
        assert a["clients"] == b["clients"] and a["examples"] == b["examples"]
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert slow.client_names == ["ann", "bob", "cy"]
    assert slow.trusted_examples == fast.trusted_examples


class Shifted(Dataset):
    """A Dataset with a per-sample transform (what a torchvision dataset looks like)."""

    def __init__(self, images, labels, shift):
        self.images, self.labels, self.shift = images, labels, shift

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i] + self.shift, int(self.labels[i])


def test_one_dataset_per_client_sequence_and_mapping():
    images, labels = _data()
    datasets = [Shifted(images[a:b], labels[a:b], 0.1 * a) for a, b in ((0, 50), (50, 160))]
    by_list = _fit(clients=datasets, config=_config())
    by_name = _fit(clients={"x": datasets[0], "y": datasets[1]}, config=_config())
    assert by_list.client_names == ["0", "1"] and by_name.client_names == ["x", "y"]
    np.testing.assert_array_equal(
        parameters_to_vector(by_list.model), parameters_to_vector(by_name.model)
    )
    assert by_list.trusted_examples == [50, 110]
    assert by_list.history[0]["examples"] == 160


def test_a_dataloader_factory():
    images, labels = _data()
    shards = [TensorDataset(images[:80], labels[:80]), TensorDataset(images[80:], labels[80:])]
    calls = []

    def factory(client, generator):
        calls.append(client)
        return DataLoader(shards[client], batch_size=32, shuffle=True, generator=generator)

    trainer = _fit(clients=LoaderClients(factory, ["p", "q"]), config=_config(local_steps=4))
    # One DataLoader per pass: 80 examples are 3 batches of 32, so 4 steps take two passes.
    assert len(calls) == 2 * 2 * 2 and calls[0] == calls[1] and sorted(set(calls)) == [0, 1]
    assert trainer.trusted_examples == [None, None]  # unknown sizes: capped by the median
    assert trainer.history[0]["examples"] == 2 * (32 + 32 + 16 + 32)  # 4 steps, wrapping
    sized = LoaderClients(factory, 2, sizes=[80, 80])
    assert _fit(1, clients=sized, config=_config()).trusted_examples == [80, 80]


def test_custom_local_update_receives_the_clients_dataset():
    images, labels = _data()
    datasets = [TensorDataset(images[:60], labels[:60]), TensorDataset(images[60:], labels[60:])]
    seen = []

    def local_update(model, optimizer, data):
        seen.append(len(data))
        return len(data)

    torch.manual_seed(0)
    trainer = FederatedTrainer(
        MnistCNN(), ak.mean(), clients=datasets, config=_config(), local_update=local_update
    )
    trainer.run_round()
    assert sorted(seen) == [60, 100]


def test_bad_client_data_is_refused():
    images, labels = _data()
    with pytest.raises(TypeError, match="not both"):
        FederatedTrainer(MnistCNN(), ak.mean(), images, labels, [range(4)], clients=[images])
    with pytest.raises(TypeError, match="client 1: expected a map-style Dataset"):
        DatasetClients([TensorDataset(images, labels), images])
    with pytest.raises(ValueError, match="client b: its dataset is empty"):
        DatasetClients({"a": TensorDataset(images, labels), "b": TensorDataset(images[:0])})
    with pytest.raises(TypeError, match="give train_images"):
        FederatedTrainer(MnistCNN(), ak.mean())


# -- devices ------------------------------------------------------------------------------------


def test_devices_resolve():
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type != "cuda"
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_the_accelerator_path_computes_what_the_host_path_computes(monkeypatch):
    """On an accelerator the update is taken on the device and copied to its row in one
    transfer (params.write_delta with a device vector); run that arithmetic on the CPU here."""
    images, labels = _data()
    kwargs = {"train_images": images, "train_labels": labels, "partitions": PARTS}
    host = _fit(config=_config(), **kwargs)
    copies = []
    original = torch.Tensor.copy_

    def counting(self, src, *args, **kw):
        if self.dim() == 1 and self.numel() == host.layout.size:
            copies.append(1)
        return original(self, src, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "copy_", counting)
    torch.manual_seed(0)
    device = FederatedTrainer(MnistCNN(), ak.mean(), config=_config(), **kwargs)
    device._host_rows = False  # what device="cuda" sets
    for _ in range(2):
        device.run_round()
    monkeypatch.undo()
    assert len(copies) == 4  # one whole-row copy per client, 2 clients x 2 rounds
    np.testing.assert_allclose(
        parameters_to_vector(device.model), parameters_to_vector(host.model), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_training_on_an_accelerator(name):
    try:
        device = resolve_device(name)
    except ValueError:
        pytest.skip(f"no {name} device here")
    images, labels = _data()
    trainer = _fit(
        train_images=images, train_labels=labels, partitions=PARTS, config=_config(), device=name
    )
    assert next(trainer.model.parameters()).device.type == device.type
    assert trainer.history[-1]["committed"]
