"""MNIST reading, finding, (offline) downloading, and the client partitions."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aggkit_torch import data

# --------------------------------------------------------------------------------------------
# IDX reader and loader on the real files
# --------------------------------------------------------------------------------------------


@pytest.mark.mnist
def test_read_idx_real_files(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    train_x = data.read_idx(raw / "train-images-idx3-ubyte")
    train_y = data.read_idx(raw / "train-labels-idx1-ubyte")
    test_x = data.read_idx(raw / "t10k-images-idx3-ubyte")
    test_y = data.read_idx(raw / "t10k-labels-idx1-ubyte")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    for y in (train_y, test_y):
        assert y.min() == 0 and y.max() == 9
        counts = np.bincount(y, minlength=10)
        # Every digit is present in roughly its tenth (MNIST's rarest, 5, is ~9%).
        assert counts.min() > 0.08 * len(y) and counts.max() < 0.12 * len(y)
    # Images use the full pixel range, with a mostly black background.
    assert train_x.min() == 0 and train_x.max() == 255
    assert 0.75 < np.mean(train_x == 0) < 0.85


@pytest.mark.mnist
def test_load_mnist_shapes_and_normalization(mnist, mnist_root):
    assert mnist.train_images.shape == (60000, 1, 28, 28)
    assert mnist.test_images.shape == (10000, 1, 28, 28)
    for x in (mnist.train_images, mnist.test_images):
        assert x.dtype == torch.float32 and x.is_contiguous()
    for y in (mnist.train_labels, mnist.test_labels):
        assert y.dtype == torch.int64
    # (0.1307, 0.3081) are MNIST's training mean and std: normalized data is ~N(0, 1).
    x = mnist.train_images.double()
    assert abs(float(x.mean())) < 5e-3
    assert abs(float(x.std()) - 1.0) < 5e-3
    # Pixel 0 and 255 map to the normalized extremes.
    assert float(x.min()) == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-6)
    assert float(x.max()) == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-6)
    # Element by element against an independent float64 computation from the raw bytes.
    raw = data.read_idx(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    ref = (raw.astype(np.float64) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(mnist.test_images[:, 0].numpy(), ref, rtol=0, atol=1e-6)
    labels = data.read_idx(mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    np.testing.assert_array_equal(mnist.test_labels.numpy(), labels)


@pytest.mark.mnist
def test_gz_files_read_like_plain_ones(mnist_root, tmp_path):
    """A root whose files are .gz (torchvision's download layout) loads the same data."""
    src = mnist_root / "MNIST" / "raw"
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:
        if "labels" in name:  # small: compress
            with open(src / name, "rb") as f, gzip.open(raw / (name + ".gz"), "wb", 1) as g:
                g.write(f.read())
        else:
            (raw / name).symlink_to(src / name)
    got = data.load_mnist(tmp_path)
    want = data.load_mnist(mnist_root)
    assert torch.equal(got.train_labels, want.train_labels)
    assert torch.equal(got.test_labels, want.test_labels)


# --------------------------------------------------------------------------------------------
# IDX reader on small synthetic files
# --------------------------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)],
)
def test_read_idx_types_and_gzip(tmp_path, dtype, code):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    blob = _idx_bytes(arr, code)
    (tmp_path / "a").write_bytes(blob)
    (tmp_path / "a.gz").write_bytes(gzip.compress(blob))
    for name in ("a", "a.gz"):
        got = data.read_idx(tmp_path / name)
        assert got.dtype == np.dtype(dtype) and got.dtype.isnative
        np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "type code"),
        (b"\x00\x00\x08\x02\x00\x00", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07", "size mismatch"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path, blob, message):
    (tmp_path / "bad").write_bytes(blob)
    with pytest.raises(ValueError, match=message):
        data.read_idx(tmp_path / "bad")


def test_read_idx_corrupt_gzip_is_a_value_error(tmp_path):
    blob = gzip.compress(_idx_bytes(np.arange(600, dtype=np.uint8) % 10, 0x08))
    cases = {
        "truncated.gz": blob[: len(blob) // 2],  # EOFError from gzip
        "not-gzip.gz": b"this is not gzip data at all",  # BadGzipFile
        # A valid header and a corrupted deflate stream: zlib.error.
        "bad-deflate.gz": blob[:10] + bytes(b ^ 0xFF for b in blob[10:-8]) + blob[-8:],
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=f"{name}: not a valid gzip file"):
            data.read_idx(tmp_path / name)


@pytest.mark.parametrize("split", ["train", "t10k"])
@pytest.mark.parametrize("gz", [False, True])
def test_labels_outside_0_9_are_rejected_at_load(tmp_path, split, gz):
    raw = tmp_path / "MNIST" / "raw"
    _fake_mnist(raw, gz=gz)
    name = f"{split}-labels-idx1-ubyte"
    labels = np.array([3, 12, 0], np.uint8) if split == "t10k" else np.full(7, 200, np.uint8)
    blob = _idx_bytes(labels, 0x08)
    if gz:
        (raw / (name + ".gz")).write_bytes(gzip.compress(blob))
    else:
        (raw / name).write_bytes(blob)
    first = "12 at index 1" if split == "t10k" else "200 at index 0"
    with pytest.raises(ValueError, match=rf"{split} labels must be digits 0-9.*first: {first}"):
        data.load_mnist(tmp_path)


def test_labels_of_another_type_are_rejected_at_load(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _fake_mnist(raw)
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(7, dtype=np.int32), 0x0C))
    with pytest.raises(ValueError, match="train labels are int32"):
        data.load_mnist(tmp_path)


# --------------------------------------------------------------------------------------------
# Finding the files; the not-found message; offline download machinery
# --------------------------------------------------------------------------------------------


def _fake_mnist(raw: Path, n_train: int = 7, n_test: int = 3, gz: bool = False) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        items = {
            f"{prefix}-images-idx3-ubyte": _idx_bytes(
                rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 0x08
            ),
            f"{prefix}-labels-idx1-ubyte": _idx_bytes(
                rng.integers(0, 10, n).astype(np.uint8), 0x08
            ),
        }
        for name, blob in items.items():
            if gz:
                (raw / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)


def test_find_mnist_root_explicit_env_and_subdirs(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "d" / "MNIST" / "raw")
    root = tmp_path / "d"
    assert data.find_mnist_root(root) == root
    assert data.find_mnist_root(root / "MNIST") == root
    assert data.find_mnist_root(root / "MNIST" / "raw") == root
    monkeypatch.setenv("AGGKIT_DATA", str(root))
    assert data.find_mnist_root() == root
    loaded = data.load_mnist()
    assert loaded.train_images.shape == (7, 1, 28, 28)
    assert loaded.test_labels.shape == (3,)


def test_missing_files_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AGGKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist(download=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "download=True" in message and "AGGKIT_DATA" in message
    # An explicit path is the only place looked, even with the variable set.
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        data.load_mnist(tmp_path / "elsewhere")


def test_partial_files_are_not_found(tmp_path):
    _fake_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError):
        data.find_mnist_root(tmp_path)


def test_search_order_without_env_is_the_cache_only(monkeypatch, tmp_path):
    # MNIST beside the working directory and beside the installed package is not looked at:
    # the library searches only what the user gave (argument, AGGKIT_DATA) and its own cache.
    monkeypatch.delenv("AGGKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "project" / "repo"
    work.mkdir(parents=True)
    _fake_mnist(tmp_path / "project" / "shared" / "data" / "MNIST" / "raw")
    _fake_mnist(work / "MNIST" / "raw")
    monkeypatch.chdir(work)
    assert data.mnist_search_paths() == [tmp_path / "cache" / "aggkit"]
    with pytest.raises(FileNotFoundError, match="AGGKIT_DATA"):
        data.find_mnist_root()
    _fake_mnist(tmp_path / "cache" / "aggkit" / "MNIST" / "raw")
    assert data.find_mnist_root() == tmp_path / "cache" / "aggkit"


def test_download_from_a_local_mirror_checks_md5(tmp_path, monkeypatch):
    """The download path, offline: file:// mirrors, patched checksums, a bad first mirror."""
    good = tmp_path / "good"
    _fake_mnist(good, gz=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in data.MNIST_MD5:
        (bad / name).write_bytes(b"corrupt")
    md5 = {n: hashlib.md5((good / n).read_bytes()).hexdigest() for n in data.MNIST_MD5}
    monkeypatch.setattr(data, "MNIST_MD5", md5)
    mirrors = [bad.as_uri() + "/", (tmp_path / "missing").as_uri() + "/", good.as_uri() + "/"]
    root = data.download_mnist(tmp_path / "dl", mirrors=mirrors)
    assert sorted(os.listdir(root / "MNIST" / "raw")) == sorted(md5)
    loaded = data.load_mnist(root)
    assert loaded.train_images.shape == (7, 1, 28, 28)
    # No mirror with the right checksum: an error that names the mismatch.
    with pytest.raises(RuntimeError, match="MD5"):
        data.download_mnist(tmp_path / "dl2", mirrors=[bad.as_uri() + "/"])
    assert not list((tmp_path / "dl2" / "MNIST" / "raw").glob("*.part"))


def test_import_does_not_import_torch():
    code = "import sys, aggkit_torch, aggkit_torch.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------


def _synthetic_labels(n: int = 3000, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, n)


PARTITIONERS = {
    "iid": lambda y, k, s: data.partition_iid(y, k, seed=s),
    "dirichlet-0.1": lambda y, k, s: data.partition_dirichlet(y, k, alpha=0.1, seed=s),
    "dirichlet-10": lambda y, k, s: data.partition_dirichlet(y, k, alpha=10.0, seed=s),
    "shards": lambda y, k, s: data.partition_shards(y, k, shards_per_client=2, seed=s),
}


@pytest.mark.parametrize("kind", sorted(PARTITIONERS))
@pytest.mark.parametrize("num_clients", [1, 7, 100])
def test_partitions_are_disjoint_covering_nonempty_reproducible(kind, num_clients):
    labels = _synthetic_labels()
    fn = PARTITIONERS[kind]
    parts = fn(labels, num_clients, 3)
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and p.ndim == 1 and len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    everything = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))
    again = fn(labels, num_clients, 3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if num_clients > 1:
        other = fn(labels, num_clients, 4)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_partitions_accept_torch_labels():
    labels = _synthetic_labels(200)
    a = data.partition_dirichlet(torch.from_numpy(labels), 5, alpha=0.5, seed=1)
    b = data.partition_dirichlet(labels, 5, alpha=0.5, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid_sizes_balanced_and_mixed():
    labels = _synthetic_labels(1003)
    parts = data.partition_iid(labels, 10, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert data.label_skew(labels, parts) < 0.15


@pytest.mark.mnist
def test_dirichlet_skew_grows_as_alpha_falls(mnist):
    labels = mnist.train_labels.numpy()
    alphas = [1000.0, 10.0, 1.0, 0.1, 0.01]
    skew = [
        data.label_skew(labels, data.partition_dirichlet(labels, 100, alpha=a, seed=0))
        for a in alphas
    ]
    assert all(a < b for a, b in itertools.pairwise(skew)), skew
    iid = data.label_skew(labels, data.partition_iid(labels, 100, seed=0))
    assert skew[0] < 2 * iid + 0.02  # large alpha is close to IID
    assert skew[-1] > 0.7  # tiny alpha: clients hold about one class


def test_dirichlet_min_size_holds_even_when_repairing():
    labels = _synthetic_labels(2000)
    # One draw at a tiny alpha leaves most of 200 clients empty: the repair must fill them.
    parts = data.partition_dirichlet(labels, 200, alpha=0.001, seed=0, min_size=5, max_tries=1)
    assert min(len(p) for p in parts) >= 5
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    parts = data.partition_dirichlet(labels, 50, alpha=0.5, seed=0, min_size=20)
    assert min(len(p) for p in parts) >= 20


@pytest.mark.mnist
def test_shards_give_few_classes_per_client(mnist):
    labels = mnist.train_labels.numpy()
    parts = data.partition_shards(labels, 100, shards_per_client=2, seed=0)
    assert {len(p) for p in parts} == {600}
    classes = np.array([len(np.unique(labels[p])) for p in parts])
    # Two shards of 300; a shard can straddle a class boundary, so at most 4 classes.
    assert classes.max() <= 4 and np.mean(classes) <= 2.5
    assert data.label_skew(labels, parts) > 0.7


def test_label_skew_extremes():
    labels = np.tile(np.arange(4), 50)
    same = [np.arange(0, 100), np.arange(100, 200)]
    assert data.label_skew(labels, same) == pytest.approx(0.0)
    by_class = [np.flatnonzero(labels == c) for c in range(4)]
    assert data.label_skew(labels, by_class) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda y: data.partition_iid(y, 0, seed=0), ValueError, "num_clients"),
        (lambda y: data.partition_iid(y, 101, seed=0), ValueError, "num_clients"),
        (lambda y: data.partition_iid(y, 2.0, seed=0), TypeError, "num_clients"),
        (lambda y: data.partition_dirichlet(y, 5, alpha=0.0, seed=0), ValueError, "alpha"),
        (lambda y: data.partition_dirichlet(y, 5, alpha=float("nan")), ValueError, "alpha"),
        (lambda y: data.partition_dirichlet(y, 5, alpha=-1.0), ValueError, "alpha"),
        (lambda y: data.partition_dirichlet(y, 5, 1.0, min_size=0), ValueError, "min_size"),
        (lambda y: data.partition_dirichlet(y, 50, 1.0, min_size=3), ValueError, "num_clients"),
        (lambda y: data.partition_dirichlet(y, 5, 1.0, max_tries=0), ValueError, "max_tries"),
        (lambda y: data.partition_shards(y, 5, shards_per_client=0), ValueError, "shards"),
        (lambda y: data.partition_shards(y, 60, shards_per_client=2), ValueError, "num_clients"),
        (lambda y: data.partition_iid(y.reshape(10, 10), 2), ValueError, "labels"),
        (lambda y: data.partition_iid(y - 1, 2), ValueError, "labels"),
        (lambda y: data.partition_iid(y.astype(float), 2), TypeError, "labels"),
    ],
)
def test_partition_argument_errors(call, exc, name):
    labels = np.arange(100) % 10
    with pytest.raises(exc, match=name):
        call(labels)
