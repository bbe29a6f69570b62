"""The client step: train_local and evaluate."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aggkit_torch.local_training import (
    configure_threads,
    evaluate,
    is_channels_last,
    prepare_model,
    reset_optimizer,
    train_local,
)
from aggkit_torch.models import MnistCNN


def _synthetic(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _fresh(channels_last: bool, seed: int = 0, lr: float = 0.01, momentum: float = 0.5):
    torch.manual_seed(seed)
    model = prepare_model(MnistCNN(), channels_last=channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return model, opt


@pytest.mark.mnist
@pytest.mark.parametrize("channels_last", [False, True])
def test_local_training_lowers_the_loss_on_real_data(mnist, channels_last):
    model, opt = _fresh(channels_last, lr=0.05, momentum=0.9)
    client = np.arange(0, 60000, 30)  # 2,000 examples
    x, y = mnist.train_images, mnist.train_labels
    before = evaluate(model, x[client], y[client])
    n, train_loss = train_local(
        model, opt, x, y, client, epochs=1, generator=torch.Generator().manual_seed(0)
    )
    after = evaluate(model, x[client], y[client])
    test = evaluate(model, mnist.test_images, mnist.test_labels)
    assert n == len(client)
    assert np.isfinite(train_loss) and train_loss < before.loss
    assert after.loss < 0.5 * before.loss
    assert test.accuracy > 0.8  # chance is 0.1; 32 steps of SGD already learn a lot


def test_same_seed_same_weights_and_shuffles_differ_by_seed():
    x, y = _synthetic()
    idx = np.arange(0, 200, 2)

    def run(seed):
        model, opt = _fresh(True)
        train_local(
            model, opt, x, y, idx, batch_size=16, generator=torch.Generator().manual_seed(seed)
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_only_the_clients_rows_are_used():
    """Labels outside the client's indices are poisoned; training must not see them."""
    x, y = _synthetic(100)
    idx = torch.arange(0, 50)
    y_poison = y.clone()
    y_poison[50:] = 10  # out of range: nll_loss raises if it ever sees one
    model, opt = _fresh(False)
    n, loss = train_local(model, opt, x, y_poison, idx, generator=torch.Generator().manual_seed(0))
    assert n == 50 and np.isfinite(loss)


def test_epochs_and_steps_count_examples():
    x, y = _synthetic(100)
    model, opt = _fresh(False)
    g = torch.Generator().manual_seed(0)
    assert train_local(model, opt, x, y, range(100), epochs=2, generator=g).num_examples == 200
    # steps wrap around passes: 64 + 36 + 64 + 36 + 64
    assert train_local(model, opt, x, y, range(100), steps=5, generator=g).num_examples == 264
    assert train_local(model, opt, x, y, [3], steps=3, generator=g).num_examples == 3


def test_mean_loss_is_the_example_weighted_mean():
    x, y = _synthetic(100)
    model, opt = _fresh(False)
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.5)
    g = torch.Generator().manual_seed(5)
    _, mean_loss = train_local(model, opt, x, y, range(100), batch_size=30, generator=g)
    # Replay the same batches by hand.
    order = torch.arange(100)[torch.randperm(100, generator=torch.Generator().manual_seed(5))]
    total = 0.0
    for start in range(0, 100, 30):
        b = order[start : start + 30]
        ref_opt.zero_grad()
        loss = F.nll_loss(reference(x[b]), y[b])
        loss.backward()
        ref_opt.step()
        total += float(loss.detach()) * len(b)
    assert mean_loss == pytest.approx(total / 100, rel=1e-5)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_non_finite_loss_is_reported_as_nan():
    x, y = _synthetic(64)
    x[0] = float("nan")
    model, opt = _fresh(False)
    n, loss = train_local(model, opt, x, y, range(64), generator=torch.Generator().manual_seed(0))
    assert n == 64 and np.isnan(loss)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"steps": 0}, ValueError, "steps"),
        ({"epochs": 1.5}, TypeError, "epochs"),
        ({"indices": []}, ValueError, "indices"),
        ({"indices": [[1, 2]]}, ValueError, "indices"),
    ],
)
def test_train_local_argument_errors(kwargs, exc, name):
    x, y = _synthetic(10)
    model, opt = _fresh(False)
    kwargs = {"indices": range(10), **kwargs}
    with pytest.raises(exc, match=name):
        train_local(model, opt, x, y, **kwargs)


def test_evaluate_accuracy_loss_and_mode():
    x, y = _synthetic(250)
    model, _ = _fresh(True)
    model.train()
    acc, loss = evaluate(model, x, y, batch_size=64)
    assert model.training  # restored
    with torch.no_grad():
        out = model.eval()(x)
    assert acc == pytest.approx(float((out.argmax(1) == y).double().mean()))
    assert loss == pytest.approx(float(F.nll_loss(out, y)), rel=1e-5)
    assert evaluate(model, x, y, batch_size=7) == pytest.approx((acc, loss), rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, x, y[:10])


def test_prepare_model_and_reset_optimizer():
    model = MnistCNN()
    assert not is_channels_last(model)
    assert is_channels_last(prepare_model(model, channels_last=True))
    assert not is_channels_last(prepare_model(model, channels_last=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _synthetic(8)
    train_local(model, opt, x, y, range(8), generator=torch.Generator().manual_seed(0))
    assert len(opt.state) > 0
    reset_optimizer(opt)
    assert len(opt.state) == 0


def test_configure_threads():
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        assert configure_threads() >= 1
        with pytest.raises(ValueError, match="num_threads"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)
