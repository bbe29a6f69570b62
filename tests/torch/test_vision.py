"""torchvision: datasets with transforms as client data, the main job's --dataset, the small
ResNet, and MNIST through torchvision against the IDX reader. Skipped without torchvision (the
package works without it); the test command installs it (README)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from torchvision import transforms  # noqa: E402
from torchvision.datasets import FakeData  # noqa: E402

import aggkit as ak  # noqa: E402
from aggkit_torch import mnist as main_job  # noqa: E402
from aggkit_torch import vision  # noqa: E402
from aggkit_torch.client_data import partition_dataset  # noqa: E402
from aggkit_torch.federated import FedAvgConfig, FederatedTrainer  # noqa: E402
from aggkit_torch.models import CifarResNet, count_parameters  # noqa: E402
from aggkit_torch.params import buffer_names, model_layout  # noqa: E402


def _fake(size: int, seed: int, transform=None) -> FakeData:
    return FakeData(
        size=size, image_size=(3, 32, 32), num_classes=10, transform=transform, random_offset=seed
    )


def test_resnet_has_batchnorm_and_all_of_it_is_aggregated():
    model = CifarResNet()
    assert count_parameters(model) == 78_042
    assert len(buffer_names(model)) == 18  # running mean and var of 9 BatchNorm layers
    layout = model_layout(model)
    assert layout.size == 78_042 + sum(
        model.state_dict()[name].numel() for name in buffer_names(model)
    )
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_torchvision_dataset_with_augmentation_is_client_data():
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(*vision.STATS["cifar10"]),
        ]
    )
    train = _fake(96, seed=0, transform=augment)
    test = _fake(40, seed=1000, transform=vision.transform("cifar10"))
    config = FedAvgConfig(clients_per_round=2, batch_size=16, local_steps=3, seed=1)

    def run():
        torch.manual_seed(0)
        trainer = FederatedTrainer(
            CifarResNet(),
            ak.mean(),
            clients=partition_dataset(train, [range(0, 48), range(48, 96)]),
            test_data=test,
            config=config,
        )
        trainer.run_round()
        return trainer

    first, second = run(), run()
    metrics = first.history[0]
    assert metrics["committed"] and metrics["examples"] == 2 * 48
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    # The server's BatchNorm statistics moved (aggregated), and the run is reproducible:
    # the augmentation draws from torch's generator, seeded per (seed, round, client).
    assert not torch.equal(first.model.bn.running_mean, torch.zeros(16))
    pairs = zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True)
    for a, b in pairs:
        assert torch.equal(a, b)


def test_main_job_cifar10_end_to_end_on_fakedata(tmp_path, monkeypatch):
    """--dataset cifar10 through torchvision (its CIFAR10 class replaced by FakeData: no
    download in tests) with the ResNet, FedBN and FedYogi."""
    made = []

    def cifar10(root, train, download, transform):
        made.append((train, download))
        return _fake(64 if train else 32, seed=0 if train else 1000, transform=transform)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar10)
    out = tmp_path / "run"
    argv = "--dataset cifar10 --clients 2 --rounds 1 --batch-size 16 --local-steps 2 "
    argv += "--aggregator mean --buffers local --server-optimizer yogi --device auto "
    argv += "--no-progress --no-download"
    accuracy = main_job.main([*argv.split(), "--out", str(out), "--data", str(tmp_path)])
    assert made == [(True, False), (False, False)]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["args"]["dataset"] == "cifar10" and summary["test_accuracy"] == accuracy
    assert summary["args"]["device"] == "auto" and summary["args"]["buffers"] == "local"
    assert summary["history"][0]["committed"]


@pytest.mark.parametrize("name", ["fashion_mnist", "emnist"])
def test_the_28x28_datasets_load_through_torchvision(name, monkeypatch, tmp_path):
    cls = {"fashion_mnist": "FashionMNIST", "emnist": "EMNIST"}[name]
    calls = []

    def fake(root, train, download, transform, **options):
        calls.append(options)
        return FakeData(size=8, image_size=(1, 28, 28), num_classes=10, transform=transform)

    monkeypatch.setattr(torchvision.datasets, cls, fake)
    images, labels = vision.to_tensors(vision.load(name, tmp_path, train=True))
    assert images.shape == (8, 1, 28, 28) and labels.dtype == torch.int64
    assert calls == ([{"split": "balanced"}] if name == "emnist" else [{}])
    assert main_job.make_model(name).fc2.out_features == vision.NUM_CLASSES[name]


def test_mnist_through_torchvision_is_the_idx_readers(mnist_root):
    """The same files, the seed tutorial's transforms: the same tensors, bit for bit."""
    from aggkit_torch.data import load_mnist

    mnist = load_mnist(mnist_root)
    for train, images, labels in (
        (True, mnist.train_images, mnist.train_labels),
        (False, mnist.test_images, mnist.test_labels),
    ):
        dataset = torchvision.datasets.MNIST(
            mnist_root, train=train, download=False, transform=vision.transform("mnist")
        )
        tv_images, tv_labels = vision.to_tensors(dataset, batch_size=5000)
        assert torch.equal(tv_labels, labels)
        assert tv_images.dtype == images.dtype and tv_images.shape == images.shape
        np.testing.assert_array_equal(tv_images.numpy(), images.numpy())
