"""Plain (centralized) PyTorch training throughput of the MNIST CNN on real MNIST.

The baseline the federated trainer is compared against, in the same run: samples per second of
one shuffled pass at batch 64 (SGD, lr 0.01, momentum 0.5), for

- ``plain``: the data as one pre-loaded normalized tensor, batches gathered by index: the loop
  a PyTorch user writes, in NCHW and in ``channels_last``;
- ``local``: the same pass through :func:`aggkit_torch.local_training.train_local` (the client
  step), which should match ``plain``;
- ``dataloader``: the PySyft/PyTorch tutorial's loop, a ``DataLoader`` over
  ``datasets.MNIST`` with ``ToTensor()`` and ``Normalize()`` applied per sample. With
  torchvision installed it is the real thing; without it, :class:`TutorialMNIST` emulates
  torchvision's per-sample work (uint8 row -> PIL image -> ``ToTensor`` -> ``Normalize``).

By default (a smoke run) each pass is a few hundred samples. ``AGGKIT_BENCH_FULL=1`` makes it
a full epoch (60,000 samples) and several rounds. Report best-of-N samples/s::

    AGGKIT_BENCH_FULL=1 .venv/bin/python -m pytest benchmarks/bench_torch_plain.py \\
        --benchmark-enable --benchmark-columns=min,mean,rounds

or run it as a script, which prints a table (``--help`` for the options)::

    .venv/bin/python benchmarks/bench_torch_plain.py --samples 60000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aggkit_torch.data import (  # noqa: E402
    MNIST_MEAN,
    MNIST_STD,
    find_mnist_root,
    load_mnist,
    read_idx,
)
from aggkit_torch.local_training import (  # noqa: E402
    configure_threads,
    prepare_model,
    train_local,
)
from aggkit_torch.models import MnistCNN  # noqa: E402

FULL = os.environ.get("AGGKIT_BENCH_FULL", "") not in ("", "0")
BATCH_SIZE = 64
LR = 0.01
MOMENTUM = 0.5

#: Builds a runner: ``make(images, labels, channels_last=..., num_samples=..., seed=...)``
#: returns a function that trains one timed pass and returns the samples it processed.
PassFn = Callable[[], int]


def _model_and_optimizer(channels_last: bool, seed: int) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(seed)
    model = prepare_model(MnistCNN(), channels_last=channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def plain_pass(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool,
    num_samples: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    warmup_batches: int = 5,
) -> PassFn:
    """Plain PyTorch training on an in-memory tensor; returns a function running one pass.

    The model, the optimizer and a few warm-up steps (oneDNN builds its kernels on first use)
    are set up here, outside the timed pass.
    """
    model, opt = _model_and_optimizer(channels_last, seed)
    g = torch.Generator().manual_seed(seed)
    n = num_samples or len(images)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step(idx: torch.Tensor) -> None:
        x = images[idx].contiguous(memory_format=fmt)
        y = labels[idx]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.nll_loss(model(x), y)
        loss.backward()
        opt.step()

    def one_pass() -> int:
        perm = torch.randperm(len(images), generator=g)[:n]
        for start in range(0, n, batch_size):
            step(perm[start : start + batch_size])
        return n

    warm = torch.randperm(len(images), generator=g)[: warmup_batches * batch_size]
    for start in range(0, len(warm), batch_size):
        step(warm[start : start + batch_size])
    return one_pass


def local_pass(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool,
    num_samples: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    warmup_batches: int = 5,
) -> PassFn:
    """The same pass through :func:`aggkit_torch.local_training.train_local`."""
    model, opt = _model_and_optimizer(channels_last, seed)
    g = torch.Generator().manual_seed(seed)
    n = num_samples or len(images)
    client = torch.randperm(len(images), generator=g)[:n]
    train_local(model, opt, images, labels, client, steps=warmup_batches, generator=g)

    def one_pass() -> int:
        return train_local(
            model, opt, images, labels, client, batch_size=batch_size, generator=g
        ).num_examples

    return one_pass


class TutorialMNIST(torch.utils.data.Dataset):
    """Emulates ``torchvision.datasets.MNIST(transform=Compose([ToTensor(), Normalize()]))``.

    Per sample, as torchvision does: take the uint8 row, wrap it in a PIL image (if Pillow is
    installed), convert with ``ToTensor`` (HWC uint8 -> CHW float32 / 255) and ``Normalize``
    (subtract the mean, divide by the std).
    """

    def __init__(self, images_u8: torch.Tensor, targets: torch.Tensor) -> None:
        self.data = images_u8
        self.targets = targets
        self.mean = torch.tensor([MNIST_MEAN]).view(-1, 1, 1)
        self.std = torch.tensor([MNIST_STD]).view(-1, 1, 1)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with matplotlib
            Image = None
        self._image = Image

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        arr = img.numpy()
        if self._image is not None:
            arr = np.array(self._image.fromarray(arr), np.uint8, copy=True)  # PIL round trip
        t = torch.from_numpy(arr).view(28, 28, 1).permute(2, 0, 1).contiguous()
        t = t.to(torch.float32).div(255)
        return t.sub_(self.mean).div_(self.std), target


def tutorial_dataset(root: Path) -> tuple[torch.utils.data.Dataset, str]:
    """The tutorial's training set: torchvision's if installed, else :class:`TutorialMNIST`."""
    try:
        from torchvision import datasets, transforms
    except ImportError:
        raw = root / "MNIST" / "raw"
        images = torch.from_numpy(read_idx(next(raw.glob("train-images-idx3-ubyte*"))))
        labels = torch.from_numpy(read_idx(next(raw.glob("train-labels-idx1-ubyte*"))))
        return TutorialMNIST(images, labels.to(torch.int64)), "emulated, no torchvision"
    tf = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )
    return datasets.MNIST(str(root), train=True, transform=tf), "torchvision"


def dataloader_pass(
    dataset: torch.utils.data.Dataset,
    *,
    channels_last: bool,
    num_samples: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    warmup_batches: int = 5,
) -> PassFn:
    """The tutorial's loop: ``DataLoader(dataset, batch_size=64, shuffle=True)``, no workers."""
    model, opt = _model_and_optimizer(channels_last, seed)
    g = torch.Generator().manual_seed(seed)
    n = num_samples or len(dataset)
    subset = torch.utils.data.Subset(dataset, torch.randperm(len(dataset), generator=g)[:n])
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=True, generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def run(max_batches: int | None) -> int:
        seen = 0
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i == max_batches:
                break
            x = x.contiguous(memory_format=fmt)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.nll_loss(model(x), y)
            loss.backward()
            opt.step()
            seen += len(y)
        return seen

    run(warmup_batches)
    return lambda: run(None)


def best_throughput(
    one_pass: PassFn, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best samples/s over ``repeats`` passes, timed with ``clock`` (wall time by default).

    ``clock=time.process_time`` counts this process's CPU time instead: with one thread it
    is close to what an idle machine would give even when other jobs share the cores (with
    more threads it also counts OpenMP's spin-waiting, so use it with one thread only).
    """
    best = 0.0
    for _ in range(repeats):
        start = clock()
        n = one_pass()
        best = max(best, n / (clock() - start))
    return best


def plain_epoch_throughput(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool,
    num_samples: int | None = None,
    repeats: int = 3,
    seed: int = 0,
) -> float:
    """Best-of-``repeats`` samples/s of plain in-memory training (the federated baseline)."""
    one_pass = plain_pass(
        images, labels, channels_last=channels_last, num_samples=num_samples, seed=seed
    )
    return best_throughput(one_pass, repeats)


LOOPS = ("plain", "local", "dataloader")
MEMORY_FORMATS = ("nchw", "channels_last")
LOOP_NAMES = {"plain": "plain in-memory", "local": "train_local", "dataloader": "DataLoader"}


def make_pass(
    loop: str,
    memory_format: str,
    *,
    root: Path,
    mnist: object = None,
    num_samples: int | None = None,
    warmup_batches: int = 5,
) -> tuple[PassFn, str]:
    """Build one of the benchmarked passes by name; returns it and a description.

    ``loop`` is one of :data:`LOOPS`, ``memory_format`` one of :data:`MEMORY_FORMATS`;
    ``mnist`` is the :func:`load_mnist` result (loaded from ``root`` if omitted).
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    kwargs = {
        "channels_last": memory_format == "channels_last",
        "num_samples": num_samples,
        "warmup_batches": warmup_batches,
    }
    if loop == "dataloader":
        dataset, kind = tutorial_dataset(root)
        return dataloader_pass(dataset, **kwargs), f"DataLoader ({kind})"
    if loop not in LOOP_NAMES:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    mnist = mnist if mnist is not None else load_mnist(root)
    build = plain_pass if loop == "plain" else local_pass
    return build(mnist.train_images, mnist.train_labels, **kwargs), LOOP_NAMES[loop]


# --------------------------------------------------------------------------------------------
# pytest-benchmark
# --------------------------------------------------------------------------------------------

SAMPLES = None if FULL else 2 * BATCH_SIZE
ROUNDS = 3 if FULL else 1
WARMUP = 5 if FULL else 1


@pytest.fixture(scope="module")
def mnist_root() -> Path:
    try:
        return find_mnist_root()
    except FileNotFoundError as e:
        pytest.skip(f"real MNIST files not available: {e}")


@pytest.fixture(scope="module")
def mnist(mnist_root):
    configure_threads()
    return load_mnist(mnist_root)


@pytest.mark.slow
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("loop", LOOPS)
def test_plain_throughput(benchmark, mnist_root, mnist, loop, memory_format):
    one_pass, name = make_pass(
        loop,
        memory_format,
        root=mnist_root,
        mnist=mnist,
        num_samples=SAMPLES,
        warmup_batches=WARMUP,
    )
    samples = benchmark.pedantic(one_pass, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        loop=name, memory_format=memory_format, samples=samples, threads=torch.get_num_threads()
    )
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["samples_per_s"] = round(samples / benchmark.stats.stats.min)
    assert samples == (SAMPLES or 60000)


# --------------------------------------------------------------------------------------------
# Script
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60000, help="samples per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    parser.add_argument("--data", default=None, help="directory holding MNIST/raw/")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated subset")
    parser.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="on a shared machine: keep cycling through the loops, interleaved, for this many "
        "seconds (after --repeats rounds) and report each one's best pass",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="'cpu' times the process's CPU time: with --threads 1, a figure that other "
        "jobs on a shared machine barely disturb",
    )
    args = parser.parse_args(argv)

    threads = configure_threads(args.threads)
    root = find_mnist_root(args.data)
    mnist = load_mnist(root)
    passes = {}
    for loop in args.loops.split(","):
        for fmt in MEMORY_FORMATS:
            one_pass, name = make_pass(loop, fmt, root=root, mnist=mnist, num_samples=args.samples)
            passes[name, fmt] = one_pass
    best = dict.fromkeys(passes, 0.0)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rounds = 0
    deadline = time.perf_counter() + args.budget
    while rounds < args.repeats or time.perf_counter() < deadline:
        for key, one_pass in passes.items():
            best[key] = max(best[key], best_throughput(one_pass, 1, clock))
        rounds += 1
    print(
        f"MNIST CNN, batch {BATCH_SIZE}, {args.samples} samples/pass, best of {rounds} "
        f"interleaved rounds, {threads} threads, {args.clock} clock, torch {torch.__version__}"
    )
    for (name, fmt), rate in best.items():
        print(f"{name:40s} {fmt:14s} {rate:8.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
