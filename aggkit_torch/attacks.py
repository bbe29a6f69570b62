"""Client-side attacks for experiments with Byzantine-robust aggregation.

An :class:`Attack` makes a fraction of each round's clients malicious and replaces their updates
before aggregation. Pass it to :class:`~aggkit_torch.federated.FederatedTrainer` as its
``update_transform``; the trainer calls it once per round, after local training, with the round's
client matrix (one update per row)::

    from aggkit_torch.attacks import Attack
    trainer = FederatedTrainer(model, ak.median(), images, labels, parts,
                               update_transform=Attack("alie", malicious=0.2, seed=0))

or use ``--attack alie --malicious 0.2`` on ``python -m aggkit_torch.mnist``.

Which clients are malicious: in round ``r``, ``floor(malicious * K)`` of the round's ``K`` clients,
drawn from a generator seeded with ``(seed, r)``: reproducible, and a different subset each round.

The attacks (``x_i`` a malicious client's own update; ``mu``, ``sigma`` the per-coordinate mean
and standard deviation of the round's honest updates, which the omniscient attacks of the papers
know):

* ``none``: nothing changes (a baseline run with the same code path);
* ``sign_flip``: ``-x_i``, the client's own update reversed;
* ``gaussian``: ``N(0, std^2)`` noise in every coordinate (``std = 1.0``);
* ``scaled``: ``scale * x_i`` (``scale = 100``), a boosted update;
* ``alie``: "A little is enough" (Baruch, Baruch, Goldberg, 2019): every attacker sends
  ``mu - z * sigma`` with ``z = Phi^{-1}((K - s) / K)``, ``s = floor(K / 2 + 1) - F`` (the
  paper's ``z_max``; ``z`` may be given instead), a vector within the spread of honest values
  that drags coordinate-wise rules. With few clients ``z`` is small (0 for K = 10, F = 1);
* ``ipm``: inner product manipulation (Xie, Koyejo, Gupta, 2020): every attacker sends
  ``-epsilon * mu`` (``epsilon = 0.1``), close together and opposite to the honest direction;
* ``label_flip``: the attacker trains on its own data with labels ``c - 1 - y`` (``c = 10``
  classes), a data-poisoning attack with no knowledge of the others.

Weights are left as the clients report them. Nothing here changes an honest client's update.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ATTACKS",
    "RULES",
    "Attack",
    "alie_z",
    "attacker_count",
    "malicious_rows",
    "robust_rule",
]

ATTACKS = ("none", "sign_flip", "gaussian", "scaled", "alie", "ipm", "label_flip")


def attacker_count(num_clients: int, fraction: float) -> int:
    """``floor(fraction * num_clients)``: how many of a round's clients attack.

    >>> attacker_count(10, 0.2), attacker_count(15, 0.1)
    (2, 1)
    """
    return math.floor(fraction * num_clients + 1e-9)


def malicious_rows(seed: int, round_index: int, num_clients: int, fraction: float) -> np.ndarray:
    """The sorted rows of round ``round_index``'s ``num_clients`` clients that are malicious:
    ``floor(fraction * num_clients)`` of them, drawn reproducibly from ``(seed, round_index)``.

    >>> malicious_rows(0, 0, 10, 0.2).tolist() == malicious_rows(0, 0, 10, 0.2).tolist()
    True
    >>> len(malicious_rows(0, 3, 15, 0.2))
    3
    """
    count = attacker_count(num_clients, fraction)
    rng = np.random.default_rng([int(seed), int(round_index), 0xA77AC])
    return np.sort(rng.permutation(num_clients)[:count])


def alie_z(num_clients: int, num_malicious: int) -> float:
    """ALIE's ``z_max = Phi^{-1}((K - s) / K)`` with ``s = floor(K / 2 + 1) - F`` (Baruch et al.,
    2019, the largest ``z`` for which ``s`` honest clients still sit farther from the mean).

    >>> round(alie_z(50, 12), 3), round(alie_z(20, 4), 3)
    (0.583, 0.385)
    """
    supporters = math.floor(num_clients / 2 + 1) - num_malicious
    p = (num_clients - supporters) / num_clients
    p = min(max(p, 1e-6), 1 - 1e-6)
    return statistics.NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class Attack:
    """A client-side attack on a fraction of every round's clients (see the module docstring).

    Parameters
    ----------
    kind : str
        One of :data:`ATTACKS`.
    malicious : float
        The fraction of each round's clients that attack, in ``[0, 1)``.
    seed : int
        Seeds the choice of attackers (and the ``gaussian`` noise).
    std, scale, epsilon : float
        Parameters of ``gaussian``, ``scaled`` and ``ipm``.
    z : float, optional
        ALIE's ``z``; by default :func:`alie_z` of the round's clients and attackers.
    num_classes : int
        For ``label_flip``.
    """

    kind: str = "none"
    malicious: float = 0.0
    seed: int = 0
    std: float = 1.0
    scale: float = 100.0
    epsilon: float = 0.1
    z: float | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {self.kind!r}")
        if not 0.0 <= self.malicious < 1.0:
            raise ValueError(f"malicious must be in [0, 1), got {self.malicious!r}")

    def rows(self, round_index: int, num_clients: int) -> np.ndarray:
        """The malicious rows of round ``round_index`` (none for ``kind="none"``)."""
        if self.kind == "none":
            return np.zeros(0, dtype=np.int64)
        return malicious_rows(self.seed, round_index, num_clients, self.malicious)

    def poison(self, round_index: int, matrix: np.ndarray) -> np.ndarray:
        """Replace the malicious rows of ``matrix`` (``[K, n]`` updates, in place) by the attack;
        returns those rows. ``label_flip`` needs the trainer: use the attack as a trainer's
        ``update_transform``."""
        rows = self.rows(round_index, len(matrix))
        if not rows.size or self.kind == "none":
            return rows
        honest = np.setdiff1d(np.arange(len(matrix)), rows)
        if self.kind == "sign_flip":
            matrix[rows] = -matrix[rows]
        elif self.kind == "scaled":
            matrix[rows] = matrix[rows] * np.float32(self.scale)
        elif self.kind == "gaussian":
            rng = np.random.default_rng([int(self.seed), int(round_index), 0x6A55])
            noise = rng.standard_normal((len(rows), matrix.shape[1]), dtype=np.float32)
            matrix[rows] = noise * np.float32(self.std)
        elif self.kind in ("alie", "ipm"):
            if not honest.size:
                return rows
            good = matrix[honest].astype(np.float64)
            mu = good.mean(axis=0)
            if self.kind == "ipm":
                matrix[rows] = (-self.epsilon * mu).astype(matrix.dtype)
            else:
                z = alie_z(len(matrix), len(rows)) if self.z is None else self.z
                matrix[rows] = (mu - z * good.std(axis=0)).astype(matrix.dtype)
        else:
            raise ValueError(f"{self.kind} needs the trainer (use the attack as update_transform)")
        return rows

    def __call__(self, trainer: Any, clients: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The trainer hook: poison ``trainer.batch.matrix`` for round ``trainer.round``."""
        matrix = trainer.batch.matrix
        if self.kind != "label_flip":
            return self.poison(trainer.round, matrix)
        rows = self.rows(trainer.round, len(clients))
        for row in rows:
            if weights[row] > 0:  # a client whose training failed stays out
                _retrain_flipped(trainer, int(clients[row]), matrix[row], self.num_classes)
        return rows


def _retrain_flipped(trainer: Any, client: int, out: np.ndarray, num_classes: int) -> None:
    """Train ``client`` from the global model on flipped labels; its update into ``out``."""
    import torch

    from aggkit_torch.federated import seed_of
    from aggkit_torch.local_training import train_local

    if trainer.partitions is None:
        raise ValueError("label flipping retrains on in-memory tensor clients only")
    config = trainer.config
    initial = trainer.global_vector()
    trainer.begin_client(client)
    generator = torch.Generator().manual_seed(seed_of(config.seed, trainer.round, client))
    try:
        train_local(
            trainer.worker,
            trainer.client_optimizer,
            trainer.train_images,
            (num_classes - 1) - trainer.train_labels,
            trainer.partitions[client],
            epochs=config.local_epochs,
            steps=config.local_steps,
            batch_size=config.batch_size,
            generator=generator,
        )
    finally:
        trainer.end_client(client)
    if not trainer.write_update(initial, out):
        out[...] = 0.0


#: The Byzantine-robust rules of :func:`robust_rule`, by their command-line names.
RULES = (
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
)


def robust_rule(
    name: str,
    clients_per_round: int,
    num_byzantine: int,
    *,
    trim_fraction: float | None = None,
    radius: float | None = None,
):
    """The aggkit factory of rule ``name`` (one of :data:`RULES`) for rounds of
    ``clients_per_round`` clients, tolerating ``num_byzantine`` of them.

    ``trim_fraction`` defaults to the smallest fraction that cuts ``num_byzantine`` values at each
    end (at least 0.1); Multi-Krum averages ``K - num_byzantine`` clients; centered clipping uses
    ``radius``, or by default an adaptive radius (the running median of the clients' distances
    from the center, ``ak.quantile_estimator(1.0, 0.5, 0.2)``).

    >>> robust_rule("bulyan", 15, 3)
    BulyanFactory(num_byzantine=3)
    """
    import aggkit as ak

    k, f = int(clients_per_round), int(num_byzantine)
    if name == "median":
        return ak.median()
    if name == "trimmed_mean":
        if trim_fraction is None:
            trim_fraction = min(0.49, max(0.1, (f + 0.5) / k))
        return ak.trimmed_mean(trim_fraction)
    if name == "krum":
        return ak.krum(f)
    if name == "multi_krum":
        return ak.krum(f, max(1, k - f))
    if name == "bulyan":
        return ak.bulyan(f)
    if name == "geometric_median":
        return ak.geometric_median()
    if name == "centered_clipping":
        tau = ak.quantile_estimator(1.0, 0.5, 0.2) if radius is None else radius
        return ak.centered_clipping(tau)
    raise ValueError(f"rule must be one of {RULES}, got {name!r}")
