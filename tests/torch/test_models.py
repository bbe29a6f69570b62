"""The MNIST CNN."""

from __future__ import annotations

import torch
from torch import nn

from aggkit_torch.models import MnistCNN, count_parameters


def test_parameter_count_matches_the_classic_cnn():
    model = MnistCNN()
    # conv1 20*1*5*5+20, conv2 50*20*5*5+50, fc1 800*500+500, fc2 500*10+10
    expected = (500 + 20) + (25000 + 50) + (400000 + 500) + (5000 + 10)
    assert expected == 431_080
    assert count_parameters(model) == 431_080
    assert count_parameters(model, trainable_only=True) == 431_080
    model.fc2.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 431_080 - 5000


def test_layers_and_output():
    model = MnistCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 20, (5, 5)),
        (20, 50, (5, 5)),
    ]
    assert [(f.in_features, f.out_features) for f in linears] == [(800, 500), (500, 10)]
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # log_softmax: rows are log-probabilities.
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3))


def test_channels_last_computes_the_same_function():
    torch.manual_seed(0)
    model = MnistCNN()
    x = torch.randn(8, 1, 28, 28)
    want = model(x)
    got = model.to(memory_format=torch.channels_last)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
