"""Client data for federated MNIST: the real IDX files, held in memory, and partitions.

MNIST is read with NumPy from torchvision's on-disk layout (``<root>/MNIST/raw/``), so
torchvision is not needed. The images are normalized once, the way torchvision's
``ToTensor()`` + ``Normalize((0.1307,), (0.3081,))`` would per sample, and kept as one
``[N, 1, 28, 28]`` float32 tensor that training slices by index.

Partitions split example indices among clients, reproducibly from a seed:

- :func:`partition_iid`: a uniformly random split into near-equal parts;
- :func:`partition_dirichlet`: label skew, each class spread over the clients with
  Dirichlet(alpha) proportions (small alpha, strong skew);
- :func:`partition_shards`: McMahan et al.'s pathological split: examples sorted by label,
  cut into shards, each client given ``shards_per_client`` random shards.

Examples
--------
>>> import numpy as np
>>> labels = np.repeat(np.arange(10), 30)
>>> parts = partition_iid(labels, num_clients=4, seed=0)
>>> [len(p) for p in parts]
[75, 75, 75, 75]
>>> parts = partition_shards(labels, num_clients=5, shards_per_client=2, seed=0)
>>> sorted(len(np.unique(labels[p])) for p in parts)
[2, 2, 2, 2, 2]
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from aggkit._checks import integer

if TYPE_CHECKING:
    import torch

__all__ = [
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "MNISTData",
    "download_mnist",
    "find_mnist_root",
    "label_skew",
    "load_mnist",
    "mnist_search_paths",
    "partition_dirichlet",
    "partition_iid",
    "partition_shards",
    "read_idx",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: The four files, without extension, in torchvision's order.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: MD5 of each compressed ``.gz`` file, as torchvision publishes them.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Download mirrors, tried in order.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

ENV_VAR = "AGGKIT_DATA"

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a NumPy array in native byte order.

    Parameters
    ----------
    path : path-like
        The file; a name ending in ``.gz`` is decompressed.

    Returns
    -------
    numpy.ndarray
        The array with the shape and element type the file declares.

    Raises
    ------
    ValueError
        If the file is not a well-formed IDX file (bad magic number, unknown type code, or a
        size that does not match its declared shape), or a ``.gz`` file is not a valid gzip
        stream (truncated or corrupt).

    Examples
    --------
    >>> import tempfile, os
    >>> raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "x-idx1-ubyte")
    ...     _ = open(p, "wb").write(raw)
    ...     read_idx(p).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise ValueError(f"{path}: not a valid gzip file ({error})") from error
    else:
        with open(path, "rb") as f:
            data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: {len(data)} bytes, shape {shape} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aggkit"


def _raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _file_in(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _has_mnist(root: Path) -> bool:
    raw = _raw_dir(root)
    return all(_file_in(raw, name) is not None for name in MNIST_FILES)


def mnist_search_paths(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The data roots :func:`find_mnist_root` tries, in order.

    Only what the user gave, never a guess from the working directory or the install location:
    an explicit ``path`` is the only candidate; otherwise ``$AGGKIT_DATA`` if set (and then only
    it); otherwise the per-user cache ``~/.cache/aggkit`` (``$XDG_CACHE_HOME`` respected), where
    :func:`download_mnist` saves the files.

    Examples
    --------
    >>> [str(p) for p in mnist_search_paths("/data")]
    ['/data']
    """
    if path is not None:
        return [Path(path).expanduser()]
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env).expanduser()]
    return [_cache_dir()]


def _not_found_message(paths: Sequence[Path]) -> str:
    looked = "\n".join(f"  {_raw_dir(p)}" for p in paths)
    names = ", ".join(MNIST_FILES)
    return (
        f"MNIST not found. Looked for {names} (or .gz) in:\n{looked}\n"
        f"Point to the directory holding MNIST/raw/ with the data path argument (--data on "
        f"the command line) or the {ENV_VAR} environment variable, or download MNIST "
        f"(about 11 MB) with "
        f"`load_mnist(download=True)` or "
        f"`python -c 'import aggkit_torch.data as d; d.download_mnist()'` "
        f"(saved under {_cache_dir()})."
    )


def find_mnist_root(path: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory that holds ``MNIST/raw/`` (torchvision's ``root``).

    Parameters
    ----------
    path : path-like, optional
        An explicit root (torchvision's layout: ``root/MNIST/raw/``). It may also name the
        ``MNIST`` or ``MNIST/raw`` directory itself. Without it: ``$AGGKIT_DATA`` if set, else
        the per-user cache ``~/.cache/aggkit`` (see :func:`mnist_search_paths`).

    Returns
    -------
    pathlib.Path
        A root such that ``root/MNIST/raw/`` holds the four files (plain or ``.gz``).

    Raises
    ------
    FileNotFoundError
        Naming every place looked and how to download.
    """
    paths = mnist_search_paths(path)
    for p in paths:
        roots = [p]
        if p.name == "MNIST":
            roots.append(p.parent)
        elif p.name == "raw" and p.parent.name == "MNIST":
            roots.append(p.parent.parent)
        for root in roots:
            if _has_mnist(root):
                return root
    raise FileNotFoundError(_not_found_message(paths))


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 60.0,
) -> Path:
    """Download the four MNIST ``.gz`` files into ``root/MNIST/raw/``, checking their MD5.

    Parameters
    ----------
    root : path-like, optional
        Where to save; default the per-user cache ``~/.cache/aggkit``.
    mirrors : sequence of str
        Base URLs tried in order for each file.
    timeout : float
        Seconds per connection attempt.

    Returns
    -------
    pathlib.Path
        The root, ready for :func:`load_mnist`.

    Raises
    ------
    RuntimeError
        If a file could not be fetched with the right checksum from any mirror.
    """
    root = Path(root).expanduser() if root is not None else _cache_dir()
    raw = _raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for gz_name, md5 in MNIST_MD5.items():
        target = raw / gz_name
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror + gz_name
            try:
                with tempfile.NamedTemporaryFile(dir=raw, delete=False, suffix=".part") as tmp:
                    tmp_path = Path(tmp.name)
                    with urllib.request.urlopen(url, timeout=timeout) as resp:
                        shutil.copyfileobj(resp, tmp)
                got = _md5(tmp_path)
                if got != md5:
                    tmp_path.unlink(missing_ok=True)
                    errors.append(f"{url}: MD5 {got}, expected {md5}")
                    continue
                tmp_path.replace(target)
                break
            except OSError as e:  # URLError, HTTPError and timeouts are OSErrors
                tmp_path.unlink(missing_ok=True)
                errors.append(f"{url}: {e}")
        else:
            raise RuntimeError(f"could not download {gz_name}:\n  " + "\n  ".join(errors))
    return root


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class MNISTData(NamedTuple):
    """MNIST in memory: normalized float32 images ``[N, 1, 28, 28]`` and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def _normalize(images: np.ndarray) -> torch.Tensor:
    import torch

    # The same operations, in the same order, as ToTensor() then Normalize(): bit-identical.
    t = torch.from_numpy(images).to(torch.float32).div_(255.0)
    return t.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze_(1)


def _read_split(raw: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_file_in(raw, f"{prefix}-images-idx3-ubyte"))  # type: ignore[arg-type]
    labels = read_idx(_file_in(raw, f"{prefix}-labels-idx1-ubyte"))  # type: ignore[arg-type]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{raw}: {prefix} images have shape {images.shape}, {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{raw}: {prefix} labels {labels.shape} do not match images")
    if labels.dtype != np.uint8:
        raise ValueError(f"{raw}: {prefix} labels are {labels.dtype}; MNIST labels are uint8")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(
            f"{raw}: {prefix} labels must be digits 0-9; {bad.size} are not "
            f"(the first: {int(labels[bad[0]])} at index {int(bad[0])})"
        )
    return images, labels


def load_mnist(root: str | os.PathLike[str] | None = None, *, download: bool = False) -> MNISTData:
    """Load MNIST into memory, normalized with mean 0.1307 and std 0.3081.

    Parameters
    ----------
    root : path-like, optional
        The directory holding ``MNIST/raw/``; found by :func:`find_mnist_root` if omitted.
    download : bool, default False
        If the files are not found, download them (into ``root`` if given, else the
        per-user cache) with :func:`download_mnist`. Tests never do.

    Returns
    -------
    MNISTData
        ``(train_images, train_labels, test_images, test_labels)``: float32
        ``[60000, 1, 28, 28]``, int64 ``[60000]``, float32 ``[10000, 1, 28, 28]``,
        int64 ``[10000]``. The image tensors are contiguous NCHW.

    Raises
    ------
    FileNotFoundError
        If the files are missing and ``download`` is False; the message says where it
        looked and how to download.
    ValueError
        If a file is corrupt (see :func:`read_idx`), the shapes disagree, or a label is not a
        digit 0-9.
    """
    import torch

    try:
        found = find_mnist_root(root)
    except FileNotFoundError:
        if not download:
            raise
        found = download_mnist(root)
    raw = _raw_dir(found)
    tr_x, tr_y = _read_split(raw, "train")
    te_x, te_y = _read_split(raw, "t10k")
    return MNISTData(
        _normalize(tr_x),
        torch.from_numpy(tr_y.astype(np.int64)),
        _normalize(te_x),
        torch.from_numpy(te_y.astype(np.int64)),
    )


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------


def _as_labels(labels: object) -> np.ndarray:
    if hasattr(labels, "detach"):  # a torch tensor, without importing torch
        labels = labels.detach().cpu().numpy()  # type: ignore[attr-defined]
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError("labels must be non-negative")
    return arr.astype(np.int64, copy=False)


def _check_num_clients(num_clients: object, n: int, per_client: int = 1) -> int:
    num_clients = integer(num_clients, "num_clients", low=1)
    if num_clients * per_client > n:
        raise ValueError(
            f"num_clients={num_clients} needs at least {num_clients * per_client} examples "
            f"(every client non-empty), but there are {n}"
        )
    return num_clients


def partition_iid(labels: object, num_clients: int, seed: int | None = None) -> list[np.ndarray]:
    """Split example indices uniformly at random into ``num_clients`` near-equal parts.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Only its length is used (kept for a uniform signature).
    num_clients : int
        Number of parts, ``1 <= num_clients <= N``.
    seed : int, optional
        Seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    list of numpy.ndarray
        One sorted int64 index array per client; disjoint, covering ``range(N)``, sizes
        differing by at most one.

    Examples
    --------
    >>> [p.tolist() for p in partition_iid([0, 1, 0, 1, 2], 2, seed=1)]
    [[0, 1, 4], [2, 3]]
    """
    y = _as_labels(labels)
    k = _check_num_clients(num_clients, len(y))
    perm = np.random.default_rng(seed).permutation(len(y))
    return [np.sort(part) for part in np.array_split(perm, k)]


def partition_dirichlet(
    labels: object,
    num_clients: int,
    alpha: float,
    seed: int | None = None,
    *,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients in Dirichlet(alpha) shares.

    For every class, shares ``p ~ Dirichlet(alpha * ones(num_clients))`` are drawn and the
    class's shuffled examples are cut at the cumulative shares (Hsu et al., 2019; the
    NIID-Bench variant, which gives no further examples to clients already holding
    ``N / num_clients``). Draws are repeated until every client holds at least ``min_size``
    examples; if ``max_tries`` draws fail (tiny ``alpha`` with many clients), the last draw
    is repaired by moving random examples from the largest clients to the short ones.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Class of each example (non-negative integers).
    num_clients : int
        Number of clients.
    alpha : float
        Concentration, > 0. Large alpha approaches IID; small alpha gives each client few
        classes.
    seed : int, optional
        Seed for :func:`numpy.random.default_rng`.
    min_size : int, default 1
        Fewest examples a client may hold (>= 1: every client is non-empty).
    max_tries : int, default 100
        Draws before repairing.

    Returns
    -------
    list of numpy.ndarray
        One sorted int64 index array per client; disjoint and covering ``range(N)``.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(10), 100)
    >>> parts = partition_dirichlet(labels, num_clients=5, alpha=0.1, seed=0)
    >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
    (1000, True)
    """
    y = _as_labels(labels)
    min_size = integer(min_size, "min_size", low=1)
    max_tries = integer(max_tries, "max_tries", low=1)
    k = _check_num_clients(num_clients, len(y), min_size)
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")

    rng = np.random.default_rng(seed)
    n = len(y)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    cap = n / k
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        sizes = np.zeros(k, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(k, alpha))
            p = np.where(sizes < cap, p, 0.0)
            total = p.sum()
            p = p / total if total > 0 else np.full(k, 1.0 / k)
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
                sizes[client] += len(piece)
        if sizes.min() >= min_size:
            break
    else:
        parts = _repair(parts, sizes, min_size, rng)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


def _repair(
    parts: list[list[np.ndarray]], sizes: np.ndarray, min_size: int, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """Move random examples from the largest clients to those below ``min_size``."""
    flat = [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
    for client in np.flatnonzero(sizes < min_size):
        while len(flat[client]) < min_size:
            donor = int(np.argmax([len(f) for f in flat]))
            need = min(min_size - len(flat[client]), len(flat[donor]) - min_size)
            take = rng.choice(len(flat[donor]), size=need, replace=False)
            keep = np.ones(len(flat[donor]), dtype=bool)
            keep[take] = False
            flat[client] = np.concatenate([flat[client], flat[donor][take]])
            flat[donor] = flat[donor][keep]
    return [[f] for f in flat]


def partition_shards(
    labels: object, num_clients: int, shards_per_client: int = 2, seed: int | None = None
) -> list[np.ndarray]:
    """Pathological non-IID split: sort by label, cut shards, deal shards to clients.

    The examples are sorted by label (ties in random order), cut into
    ``num_clients * shards_per_client`` contiguous shards of near-equal size, and each client
    receives ``shards_per_client`` shards chosen at random (McMahan et al., 2017: 100 clients,
    2 shards of 300 each). Most clients then see about ``shards_per_client`` classes.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Class of each example.
    num_clients : int
        Number of clients.
    shards_per_client : int, default 2
        Shards per client, ``>= 1``; ``num_clients * shards_per_client <= N``.
    seed : int, optional
        Seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    list of numpy.ndarray
        One sorted int64 index array per client; disjoint and covering ``range(N)``.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(4), 5)
    >>> parts = partition_shards(labels, num_clients=2, shards_per_client=2, seed=0)
    >>> sorted(len(p) for p in parts)
    [10, 10]
    """
    y = _as_labels(labels)
    shards_per_client = integer(shards_per_client, "shards_per_client", low=1)
    k = _check_num_clients(num_clients, len(y), shards_per_client)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(y))
    order = shuffled[np.argsort(y[shuffled], kind="stable")]
    shards = np.array_split(order, k * shards_per_client)
    deal = rng.permutation(len(shards)).reshape(k, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]


def label_skew(labels: object, parts: Sequence[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 means every client has the global label mix; values near 1 mean clients hold classes
    that are rare overall. Empty clients are ignored.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Class of each example.
    parts : sequence of index arrays
        A partition, as the ``partition_*`` functions return.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([0, 0, 1, 1])
    >>> label_skew(labels, [np.array([0, 2]), np.array([1, 3])])
    0.0
    >>> label_skew(labels, [np.array([0, 1]), np.array([2, 3])])
    0.5
    """
    y = _as_labels(labels)
    num_classes = int(y.max()) + 1 if y.size else 0
    global_dist = np.bincount(y, minlength=num_classes) / max(len(y), 1)
    dists = []
    for part in parts:
        part = np.asarray(part)
        if part.size == 0:
            continue
        local = np.bincount(y[part], minlength=num_classes) / part.size
        dists.append(0.5 * np.abs(local - global_dist).sum())
    return float(np.mean(dists)) if dists else 0.0
