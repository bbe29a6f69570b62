"""Plain PyTorch training of the classic MNIST CNN (the PyTorch example that the PySyft
federated tutorial started from), with the data held in memory.

    python THIS_SCRIPT [--epochs 2] [--quick]

``examples/mnist_federated.py`` is this script turned into federated training over the two
virtual workers "bob" and "alice" with a robust aggregator; ``diff`` the two files to see the
changed lines.
"""

import argparse

import torch
import torch.nn.functional as F

from aggkit_torch.data import load_mnist
from aggkit_torch.models import MnistCNN as Net


def train(model, optimizer, images, labels, batch_size=64):
    model.train()
    order = torch.randperm(len(images))
    for start in range(0, len(images), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = F.nll_loss(model(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
    return len(images)


@torch.no_grad()
def test(model, images, labels, batch_size=1000):
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        predicted = model(images[start : start + batch_size]).argmax(dim=1)
        correct += (predicted == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a few thousand examples only")
    args = parser.parse_args()
    torch.manual_seed(1)
    data = load_mnist()
    n = 4000 if args.quick else len(data.train_images)
    images, labels = data.train_images[:n], data.train_labels[:n]
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch in range(1, args.epochs + 1):
        train(model, optimizer, images, labels)
        accuracy = test(model, data.test_images, data.test_labels)
        print(f"epoch {epoch}: test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
