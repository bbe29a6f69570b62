"""Federated averaging of a PyTorch model with any aggkit aggregator.

Each round (McMahan et al. 2017, with the server-optimizer view of Reddi et al. 2021):

1. sample the round's clients, reproducibly from ``(seed, round)``: exactly
   ``clients_per_round`` without replacement (``sampling="fixed_size"``), each client
   independently with probability ``clients_per_round / num_clients`` (``"poisson"``; the
   round's size varies, and a DP aggregator divides by the expected count), or every client
   once per epoch (``"epochs"``: an order drawn per epoch, ``clients_per_round`` at a time;
   what DP-FTRL's tree aggregation needs);
2. for each client: copy the global weights into one reusable worker module (never aliased),
   train locally with a fresh client optimizer (SGD with momentum by default), and write the
   update ``global - trained`` straight into that client's row of a :class:`~aggkit.ClientBatch`;
   a client whose update holds NaN or Inf gets a zero update and weight 0 (``docs/design.md``,
   "Non-finite client updates in training");
3. aggregate the batch with the aggregator process, whose state is carried across rounds;
4. apply the aggregate as a pseudo-gradient with the server optimizer: SGD with learning rate 1.0
   is FedAvg, with momentum FedAvgM, Adam FedAdam;
5. evaluate on the test set every ``eval_every`` rounds.

Steps 2 to 4 after local training are :mod:`aggkit_torch.rounds`, the round core the Flower
strategy shares. A client's example count (what ``local_update`` returns) is untrusted: by default
(``client_weighting="capped"``) its weight is at most the examples :func:`~aggkit_torch.
local_training.train_local` processes on its partition under this configuration; a count that is
not a finite positive number up to 2**53 drops the client from the round, reported in the round's
``dropped`` metrics. A round is a transaction: the model, the server optimizer and the aggregator
state change only if it succeeded (``committed``); otherwise everything stays as it was, and only
the round counter moves on. Unweighted aggregators (``dp_aggregator``) get no weights. A run
checkpoints and resumes bit-exactly: every random draw is derived from ``(seed, round, client)``.

With a DP aggregator every round's metrics carry the run's ``epsilon`` at ``config.delta``,
accounted for the sampling the trainer really did (:class:`~aggkit_torch.accounting.RunAccountant`:
Poisson under add-or-remove-one, fixed-size under replace-one); an aggregator whose own running
epsilon assumes another scheme is refused (:class:`aggkit.privacy.SamplingMismatchError`).

DP-FTRL (Kairouz et al. 2021) is ``ak.tree_aggregation(z, clients_per_round, clip,
restart_rounds=E)`` with ``sampling="epochs"`` (``E = num_clients // clients_per_round`` rounds
an epoch, or a divisor of it): each round's aggregate is the tree's per-round value (the
difference of consecutive noised cumulative sums), and the server optimizer applies it as a
pseudo-gradient, so with SGD the model is the initial one minus the learning rate times the
noised cumulative sum (DP-FTRL), and with server momentum it is the paper's DP-FTRLM (momentum on
the per-round values). The epsilon is the tree's, with no amplification by sampling.

Examples
--------
>>> import torch, aggkit as ak
>>> from aggkit_torch.federated import FederatedTrainer, FedAvgConfig
>>> images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
>>> from aggkit_torch.models import MnistCNN
>>> trainer = FederatedTrainer(
...     MnistCNN(), ak.robust_aggregator(), images, labels, [range(0, 32), range(32, 64)],
...     config=FedAvgConfig(clients_per_round=2, seed=0))
>>> metrics = trainer.run_round()
>>> metrics["round"], sorted(metrics["measurements"])
(1, ['zeroed_count', 'zeroing/clipped_count', 'zeroing/clipping_norm', 'zeroing_norm'])
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import aggkit as ak
from aggkit_torch import checkpoint
from aggkit_torch.accounting import RunAccountant
from aggkit_torch.client_data import ClientData, as_client_data, passes
from aggkit_torch.local_training import (
    evaluate,
    evaluate_batches,
    examples_per_round,
    prepare_model,
    proximal_term,
    reset_optimizer,
    resolve_device,
    train_batches,
    train_local,
)
from aggkit_torch.params import (
    aggregated_tensors,
    flat_tensor,
    model_layout,
    parameters_to_vector,
    write_delta,
)
from aggkit_torch.rounds import (
    FedAdagrad,
    FedYogi,
    RoundCore,
    check_weighting,
    flatten_measurements,
    server_step,
)

__all__ = [
    "FedAvgConfig",
    "FederatedTrainer",
    "apply_update",
    "flatten_measurements",
    "make_server_optimizer",
    "sample_clients",
    "seed_of",
]

_SERVER_OPTIMIZERS = ("sgd", "adam", "adagrad", "yogi")
#: Each server optimizer's defaults where a FedAvgConfig leaves them unset (None): SGD and Adam
#: with learning rate 1 (SGD 1.0 is FedAvg), FedAdagrad and FedYogi with Flower's.
SERVER_DEFAULTS: dict[str, dict[str, float | None]] = {
    "sgd": {"server_lr": 1.0, "server_beta1": None, "server_beta2": None, "server_tau": None},
    "adam": {"server_lr": 1.0, "server_beta1": None, "server_beta2": None, "server_tau": None},
    "adagrad": {"server_lr": 0.1, "server_beta1": 0.0, "server_beta2": None, "server_tau": 1e-3},
    "yogi": {"server_lr": 0.01, "server_beta1": 0.9, "server_beta2": 0.99, "server_tau": 1e-3},
}
_SAMPLINGS = ("fixed_size", "poisson", "epochs")  # the trainer's schemes (accounting.SAMPLINGS)
#: What happens to floating buffers (BatchNorm running statistics): see ``FedAvgConfig.buffers``.
BUFFERS = ("aggregate", "local")


@dataclass(frozen=True)
class FedAvgConfig:
    """Hyperparameters of a federated-averaging run (all have working defaults).

    Attributes
    ----------
    clients_per_round : int
        Clients per round: exactly this many (``"fixed_size"``) or this many on average
        (``"poisson"``).
    sampling : {"fixed_size", "poisson"}
        ``"fixed_size"``: ``clients_per_round`` distinct clients uniformly at random.
        ``"poisson"``: each client independently with probability ``clients_per_round /
        num_clients`` (what DP amplification by sampling is usually stated for).
        ``"epochs"``: epochs of ``num_clients // clients_per_round`` rounds, in which every
        client joins one round (an order drawn per epoch; the ``num_clients % clients_per_round``
        clients last in that order sit the epoch out); for tree aggregation (DP-FTRL), whose
        guarantee needs each client at most once per tree.
    local_epochs : int
        Passes over each client's data per round (ignored when ``local_steps`` is set).
    local_steps : int or None
        Exact number of local optimizer steps instead of epochs.
    batch_size : int
        Local batch size.
    client_lr, client_momentum : float
        The client's SGD optimizer (the PyTorch MNIST example: lr 0.01; momentum 0.5 here).
    server_optimizer : {"sgd", "adam", "adagrad", "yogi"}
        How the aggregate updates the global model: SGD (FedAvg; with momentum FedAvgM),
        ``torch.optim.Adam`` (FedAdam), or Flower's FedAdagrad and FedYogi
        (:class:`~aggkit_torch.rounds.FedAdagrad`, :class:`~aggkit_torch.rounds.FedYogi`).
    server_lr : float or None
        Server learning rate; None: the optimizer's default (:data:`SERVER_DEFAULTS`: 1.0 for
        SGD, which is plain FedAvg, and Adam; Flower's ``eta`` for FedAdagrad, 0.1, and
        FedYogi, 0.01).
    server_momentum : float
        SGD momentum (FedAvgM).
    server_beta1, server_beta2, server_tau : float or None
        FedAdagrad's and FedYogi's ``beta_1``, ``beta_2`` and ``tau``; None: Flower's defaults
        (FedAdagrad: 0, unused, 1e-3; FedYogi: 0.9, 0.99, 1e-3).
    proximal_mu : float
        FedProx (Li et al. 2020): each client minimizes its loss plus ``mu / 2 * ||w -
        w_global||^2`` (Flower's ``"proximal-mu"``); 0 (the default) is plain local training.
        Applied as the term's gradient ``mu * (w - w_global)``, added to every trainable
        parameter's gradient by a hook, so it reaches a custom ``local_update`` too.
    client_weighting : {"capped", "num_examples", "uniform"}
        How client-reported example counts become weights for weighted aggregators
        (:mod:`aggkit_torch.rounds`). ``"capped"`` (the default): the count, at most what the
        server knows the client can have processed (its partition size under this
        configuration), or ``weight_cap`` times the round's median count when the server knows
        no size; ``"num_examples"``: the count as reported (trust every client); ``"uniform"``:
        1 each.
    weight_cap : float
        With ``"capped"``, the multiple of the round's median count that bounds a client whose
        partition size the server does not know (>= 1; default 4).
    seed : int
        Seeds client sampling and every client's shuffling.
    eval_every : int
        Evaluate on the test set every this many rounds (and after the last one).
    delta : float
        The delta at which a DP run reports its epsilon, in (0, 1).
    channels_last : bool or None
        Memory format of the models (None: ``channels_last``, see
        :data:`aggkit_torch.local_training.CHANNELS_LAST_DEFAULT`).
    buffers : {"aggregate", "local"}
        Floating buffers (BatchNorm's running statistics): ``"aggregate"`` (the default) puts
        them through the aggregator with the parameters and sets the server's to the aggregate
        (``buffer - update``: the clients' weighted mean under a mean aggregator; never a server
        optimizer step). ``"local"`` keeps them on the clients, as FedBN (Li et al. 2021) keeps
        its normalization statistics: each client trains with its own from its second round on
        (the server's before), and the server's are never changed. Integer buffers
        (``num_batches_tracked``) are never aggregated: the server keeps its own, each client
        starts from it (:mod:`aggkit_torch.params`).
    """

    clients_per_round: int = 10
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 64
    client_lr: float = 0.01
    client_momentum: float = 0.5
    server_optimizer: str = "sgd"
    server_lr: float | None = None
    server_momentum: float = 0.0
    client_weighting: str = "capped"
    weight_cap: float = 4.0
    seed: int = 0
    eval_every: int = 1
    channels_last: bool | None = None
    sampling: str = "fixed_size"
    delta: float = 1e-5
    buffers: str = "aggregate"
    server_beta1: float | None = None
    server_beta2: float | None = None
    server_tau: float | None = None
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.server_optimizer not in _SERVER_OPTIMIZERS:
            raise ValueError(f"server_optimizer must be one of {_SERVER_OPTIMIZERS}")
        for name, default in SERVER_DEFAULTS[self.server_optimizer].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)  # frozen: resolved once, here
        for name in ("server_beta1", "server_beta2"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.server_tau is not None and not self.server_tau > 0:
            raise ValueError(f"server_tau must be positive, got {self.server_tau!r}")
        if not (isinstance(self.proximal_mu, (int, float)) and 0 <= self.proximal_mu < math.inf):
            raise ValueError(f"proximal_mu must be finite and >= 0, got {self.proximal_mu!r}")
        for name in ("clients_per_round", "local_epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.local_steps is not None and (
            not isinstance(self.local_steps, int) or self.local_steps < 1
        ):
            raise ValueError(
                f"local_steps must be a positive int or None, got {self.local_steps!r}"
            )
        for name in ("client_lr", "server_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("client_momentum", "server_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        check_weighting(self.client_weighting, self.weight_cap)
        if self.sampling not in _SAMPLINGS:
            raise ValueError(f"sampling must be one of {_SAMPLINGS}, got {self.sampling!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.buffers not in BUFFERS:
            raise ValueError(f"buffers must be one of {BUFFERS}, got {self.buffers!r}")


def seed_of(*fields: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms).

    The trainer seeds each client's training with ``seed_of(seed, round, client)``.
    """
    return int(np.random.SeedSequence(list(fields)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_clients(
    seed: int, round_index: int, num_clients: int, count: int, sampling: str = "fixed_size"
) -> np.ndarray:
    """The clients (of ``num_clients``) of round ``round_index`` (0-based), from
    ``(seed, round_index)`` alone, so a resumed run draws what an unbroken one draws.

    ``"fixed_size"``: ``count`` distinct clients, uniformly without replacement (in draw order).
    ``"poisson"``: each client independently with probability ``count / num_clients``, in
    increasing order; the number drawn is Binomial(num_clients, count / num_clients).
    ``"epochs"``: round ``r`` is slice ``r % E`` (``count`` clients) of the permutation of epoch
    ``r // E``, drawn from ``(seed, epoch)``, where ``E = num_clients // count``: every client
    once per epoch (the last ``num_clients % count`` of the permutation sit it out).

    >>> sample_clients(0, 0, 10, 3)
    array([5, 9, 6])
    >>> sample_clients(0, 0, 10, 3, "poisson")
    array([1, 2, 3])
    >>> sorted(int(c) for r in range(2) for c in sample_clients(0, r, 6, 3, "epochs"))
    [0, 1, 2, 3, 4, 5]
    """
    if not 0 < count <= num_clients:
        raise ValueError(f"count must be in [1, num_clients={num_clients}], got {count}")
    if sampling == "epochs":
        epoch, position = divmod(round_index, num_clients // count)
        order = np.random.default_rng([seed, epoch, 1]).permutation(num_clients)
        return order[position * count : (position + 1) * count]
    rng = np.random.default_rng([seed, round_index])
    if sampling == "fixed_size":
        return rng.choice(num_clients, count, replace=False)
    if sampling == "poisson":
        return np.flatnonzero(rng.random(num_clients) < count / num_clients)
    raise ValueError(f"sampling must be one of {_SAMPLINGS}, got {sampling!r}")


def make_server_optimizer(params, config: FedAvgConfig) -> torch.optim.Optimizer:
    """The server optimizer of ``config`` over ``params`` (SGD lr 1.0 = FedAvg)."""
    name, lr = config.server_optimizer, config.server_lr
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.server_momentum)
    if name == "adagrad":
        return FedAdagrad(params, lr=lr, tau=config.server_tau, beta1=config.server_beta1)
    if name == "yogi":
        return FedYogi(
            params,
            lr=lr,
            beta1=config.server_beta1,
            beta2=config.server_beta2,
            tau=config.server_tau,
        )
    return torch.optim.Adam(params, lr=lr)


def apply_update(optimizer: torch.optim.Optimizer, named_params, update) -> bool:
    """One server step with the aggregate ``update`` (``{name: array}``) as the gradient.

    :func:`aggkit_torch.rounds.server_step`: False (and nothing changed) if the step would make
    a parameter non-finite.
    """
    return server_step(optimizer, named_params, update)


class FederatedTrainer:
    """Federated averaging of ``model`` over client partitions with an aggkit aggregator.

    Parameters
    ----------
    model : torch.nn.Module
        The global model, trained in place. Its trainable parameters of any floating dtype are
        aggregated, with its floating buffers unless ``config.buffers="local"``; frozen
        parameters and integer buffers are the server's own (:mod:`aggkit_torch.params`).
    aggregator : aggkit factory
        Weighted (given client weights) or unweighted (given none).
    train_images, train_labels : torch.Tensor, optional
        All training examples in memory; clients are index sets into them (the fast path:
        batches by ``index_select``). Leave them out when giving ``clients``.
    partitions : sequence of index arrays, or mapping of client name to index array
        One per client (``aggkit_torch.data.partition_*``), or named clients such as
        ``{"bob": range(0, 30000), "alice": range(30000, 60000)}``.
    test_images, test_labels : torch.Tensor, optional
        For :meth:`evaluate` and per-round test accuracy.
    clients : ClientData, or sequence or mapping of Dataset, optional
        Client data that is not in-memory tensors (:mod:`aggkit_torch.client_data`): one
        ``Dataset`` per client (``torchvision.datasets`` objects with their transforms work as
        they are), ``partition_dataset(dataset, partitions)``, or ``LoaderClients(factory,
        names)`` for the user's own ``DataLoader`` s.
    test_data : Dataset or iterable of batches, optional
        A test ``Dataset`` (read in batches of 1000) or ``DataLoader``, instead of the test
        tensors.
    device : str or torch.device, optional
        Where clients train and the global model lives: ``"cpu"`` (the default), ``"cuda"``,
        ``"mps"``, ``"auto"`` (:func:`~aggkit_torch.local_training.resolve_device`). Tensor
        data is moved there once; dataset batches one by one. Aggregation runs on host
        arrays: each client's update is computed on the device and copied into its row in one
        transfer.
    loss_fn : callable, default :func:`torch.nn.functional.nll_loss`
        ``loss_fn(output, target)`` of local training; also called with ``reduction="sum"``
        by evaluation.
    config : FedAvgConfig
        Hyperparameters.
    local_update : callable, optional
        ``local_update(model, optimizer, images, labels) -> num_examples`` trains the worker model
        in place on one client's examples; an existing script's own training function fits as
        is. Its ``num_examples`` is treated as a client's report (``client_weighting``). Torch's
        global random generator is seeded per (seed, round, client) before each call, so runs
        stay reproducible. By default :func:`~aggkit_torch.local_training.train_local` with the
        config's epochs, steps and batch size.
    update_transform : callable, optional
        ``update_transform(trainer, clients, weights)`` is called once per round after local
        training and before aggregation; it may change rows of ``trainer.batch.matrix`` (the
        round's admitted updates, one row per client of ``clients``; ``weights`` are the
        policy's, 0 for a zeroed non-finite update). For experiments: the attacks of
        :mod:`aggkit_torch.attacks` plug in here.
    """

    def __init__(
        self,
        model: nn.Module,
        aggregator: ak.Factory,
        train_images: torch.Tensor | None = None,
        train_labels: torch.Tensor | None = None,
        partitions: Sequence[Any] | Mapping[Any, Any] | None = None,
        test_images: torch.Tensor | None = None,
        test_labels: torch.Tensor | None = None,
        *,
        clients: ClientData | Sequence[Any] | Mapping[Any, Any] | None = None,
        test_data: Any = None,
        config: FedAvgConfig | None = None,
        local_update: Callable[..., int] | None = None,
        update_transform: Callable[..., Any] | None = None,
        device: str | torch.device | None = None,
        loss_fn: Callable[..., torch.Tensor] = F.nll_loss,
    ):
        self.config = config or FedAvgConfig()
        if not isinstance(aggregator, ak.Factory):
            raise TypeError(f"aggregator must be an aggkit factory, got {aggregator!r}")
        self.device = resolve_device(device)
        #: Whether updates are written tensor by tensor into host rows (CPU), or taken on the
        #: device and copied to the row in one transfer.
        self._host_rows = self.device.type == "cpu"
        self.loss_fn = loss_fn
        self.local_update = local_update
        self.update_transform = update_transform
        #: The clients' data when not tensors (None on the tensor fast path).
        self.data: ClientData | None = None
        self.partitions: list[np.ndarray] | None = None
        if clients is not None:
            if any(v is not None for v in (train_images, train_labels, partitions)):
                raise TypeError("give either clients= or train tensors and partitions, not both")
            self.data = as_client_data(clients)
            self.client_names = list(self.data.names)
            sizes = list(self.data.sizes)
        else:
            if train_images is None or train_labels is None or partitions is None:
                raise TypeError("give train_images, train_labels and partitions, or clients=")
            if isinstance(partitions, Mapping):
                self.client_names = [str(name) for name in partitions]
                partitions = list(partitions.values())
            else:
                self.client_names = [str(i) for i in range(len(partitions))]
            self.partitions = [np.asarray(p, dtype=np.int64) for p in partitions]
            if not self.partitions or any(len(p) == 0 for p in self.partitions):
                raise ValueError("partitions must be a non-empty list of non-empty index arrays")
            sizes = [len(p) for p in self.partitions]
            train_images, train_labels = train_images.to(self.device), train_labels.to(self.device)
        if self.config.clients_per_round > len(self.client_names):
            raise ValueError(
                f"clients_per_round ({self.config.clients_per_round}) exceeds the number of "
                f"clients ({len(self.client_names)})"
            )
        if test_data is not None and test_images is not None:
            raise TypeError("give either test_data= or test tensors, not both")
        if test_images is not None:
            test_images, test_labels = test_images.to(self.device), test_labels.to(self.device)
        self.model = prepare_model(model, channels_last=self.config.channels_last).to(self.device)
        self.worker = copy.deepcopy(self.model)  # one reusable client module, never aliased
        self.train_images, self.train_labels = train_images, train_labels
        self.test_images, self.test_labels = test_images, test_labels
        self.test_data = test_data
        self._buffers = self.config.buffers == "aggregate"
        self.layout = model_layout(self.model, buffers=self._buffers)
        self.process = aggregator.create(self.layout)
        self.aggregator_state = self.process.initialize()
        self.core = RoundCore(
            self.process, weighting=self.config.client_weighting, weight_cap=self.config.weight_cap
        )
        #: The example count the trainer trusts for each client: what train_local reports for
        #: its partition under this configuration (the cap of ``client_weighting="capped"``).
        #: None where the size is unknown (a ``LoaderClients`` without sizes).
        self.trusted_examples = [
            None
            if size is None
            else examples_per_round(
                size,
                epochs=self.config.local_epochs,
                steps=self.config.local_steps,
                batch_size=self.config.batch_size,
            )
            for size in sizes
        ]
        self.client_optimizer = torch.optim.SGD(
            self.worker.parameters(),
            lr=self.config.client_lr,
            momentum=self.config.client_momentum,
        )
        self.server_optimizer = make_server_optimizer(
            [p for _, p in self._aggregated(parameters=True)], self.config
        )
        #: With ``config.buffers="local"``: each client's own floating buffers, by client index
        #: (saved after its training, loaded before its next one; in checkpoints).
        self.local_buffers: dict[int, dict[str, torch.Tensor]] = {}
        self._proximal = proximal_term(self.worker, 0.0)  # FedProx hooks of the current client
        #: The last round's admitted updates, one row per client (``update_transform`` edits it).
        self.batch: ak.ClientBatch = self.core.begin(self.config.clients_per_round).batch()
        #: The privacy the run has spent, for the sampling it does (None-valued for non-DP).
        self.accountant = RunAccountant(
            self.config.sampling,
            clients_per_round=self.config.clients_per_round,
            population=len(self.client_names),
            delta=self.config.delta,
            rounds_per_epoch=len(self.client_names) // self.config.clients_per_round,
        )
        self.round = 0
        self.history: list[dict[str, Any]] = []

    # -- one round ------------------------------------------------------------------------------

    def sample_clients(self, round_index: int) -> np.ndarray:
        """The clients of round ``round_index`` (0-based), reproducible from the seed."""
        config = self.config
        return sample_clients(
            config.seed,
            round_index,
            len(self.client_names),
            config.clients_per_round,
            config.sampling,
        )

    def run_round(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Run one round; returns its metrics (also appended to :attr:`history`).

        The metrics: ``round``, ``clients`` (admitted, in row order), ``train_loss``,
        ``nonfinite_clients``, ``examples``, ``capped_clients``, ``dropped`` (``[{"client",
        "reason"}]``), ``committed`` (False: the model, optimizer and aggregator state are as
        they were, and ``failure`` says why), ``measurements``, timings, and the test accuracy
        and loss when evaluated.
        """
        config = self.config
        started = time.perf_counter()
        clients = self.sample_clients(self.round)
        initial = self.global_vector()
        rnd = self.core.begin(len(clients))
        losses = []
        admitted = []
        for client in clients:
            name = self.client_names[client]
            examples, loss = self._train_client(int(client))
            problem = rnd.count_problem(examples)
            if problem is not None:
                rnd.drop(name, problem)
            else:
                self.write_update(initial, rnd.next_row())
                if rnd.add(name, reported=examples, known=self.trusted_examples[client]):
                    losses.append(loss)
                admitted.append(client)
            if progress is not None:
                progress(1)
        self.batch = rnd.batch()
        if self.update_transform is not None:
            self.update_transform(self, np.asarray(admitted, dtype=np.int64), rnd.weights())
        trained = time.perf_counter()
        outcome = rnd.aggregate(self.aggregator_state)
        aggregated = time.perf_counter()
        spent = None
        if outcome.ok:
            # An aggregator's epsilon for another sampling scheme is refused before any change;
            # a round that was aggregated is accounted even if its step is not applied below.
            self.accountant.check(outcome.measurements)
            spent = self.accountant.record(outcome.state, outcome.measurements)
            if self._apply(outcome.result):
                self.aggregator_state = outcome.state
                rnd.committed = True
            else:
                rnd.fail("the server step would make the model non-finite")
        self.round += 1
        metrics: dict[str, Any] = {
            "round": self.round,
            **rnd.metrics(),
            "train_loss": float(np.nanmean(losses)) if np.isfinite(losses).any() else math.nan,
            "measurements": outcome.measurements,
            "train_seconds": trained - started,
            "aggregate_seconds": aggregated - trained,
            "sampling": config.sampling,
        }
        if spent is not None:
            metrics.update(epsilon=spent["epsilon"], delta=spent["delta"])
        elif self.accountant.rounds:  # a round that released nothing: the run's spend so far
            metrics.update(epsilon=self.accountant.epsilon(), delta=config.delta)
        if self.has_test_data and (self.round % config.eval_every == 0):
            accuracy, loss = self.evaluate()
            metrics.update(test_accuracy=accuracy, test_loss=loss)
        metrics["round_seconds"] = time.perf_counter() - started
        self.history.append(metrics)
        return metrics

    @property
    def has_test_data(self) -> bool:
        """Whether test tensors or ``test_data`` were given."""
        return self.test_images is not None or self.test_data is not None

    def global_vector(self) -> np.ndarray | torch.Tensor:
        """The global model's aggregated state, flat: a host vector on the CPU, a tensor on
        the trainer's device otherwise (:func:`~aggkit_torch.params.write_delta`)."""
        if self._host_rows:
            return parameters_to_vector(self.model, buffers=self._buffers)
        dtype = torch.from_numpy(np.empty(0, self.layout.dtype)).dtype
        return flat_tensor(self.model, dtype, buffers=self._buffers)

    def write_update(self, initial: np.ndarray | torch.Tensor, out: np.ndarray) -> bool:
        """Write the worker's update ``initial - trained`` into the row ``out``; True if
        finite (one device-to-host copy when the worker is on an accelerator)."""
        return write_delta(initial, self.worker, out, buffers=self._buffers)

    def _aggregated(self, *, parameters: bool) -> list[tuple[str, torch.Tensor]]:
        """The global model's aggregated parameters (or, False, buffers), by name."""
        return [
            (name, t)
            for name, t in aggregated_tensors(self.model, buffers=self._buffers)
            if isinstance(t, nn.Parameter) == parameters
        ]

    def begin_client(self, client: int) -> None:
        """Reset the worker for ``client``: the global model's whole state (parameters, frozen
        ones included, and buffers), the client's own floating buffers under
        ``buffers="local"`` once it has trained, and a fresh client optimizer."""
        own = self.local_buffers.get(client, {})
        with torch.no_grad():
            worker = self.worker.state_dict(keep_vars=True)
            for name, tensor in self.model.state_dict(keep_vars=True).items():
                worker[name].copy_(own.get(name, tensor))
        reset_optimizer(self.client_optimizer)
        self._proximal = proximal_term(self.worker, self.config.proximal_mu)

    def end_client(self, client: int) -> None:
        """After ``client`` trained: remove the FedProx hooks; keep its floating buffers under
        ``buffers="local"``."""
        self._proximal.remove()
        if not self._buffers:
            self.local_buffers[client] = {
                name: t.detach().clone()
                for name, t in self.worker.state_dict(keep_vars=True).items()
                if not isinstance(t, nn.Parameter) and t.is_floating_point()
            }

    def _train_client(self, client: int) -> tuple[object, float]:
        """Train the worker from the global model on ``client``'s examples: (count, mean loss)."""
        self.begin_client(client)
        try:
            return self._train_worker(client)
        finally:
            self.end_client(client)

    def _train_worker(self, client: int) -> tuple[object, float]:
        config = self.config
        seed = seed_of(config.seed, self.round, client)
        if self.data is not None:
            torch.manual_seed(seed)  # dropout, augmentation and DataLoader seeds draw from it
            if self.local_update is not None:
                data = self.data.local_data(client)
                return self.local_update(self.worker, self.client_optimizer, data), math.nan
            batches = passes(
                self.data,
                client,
                batch_size=config.batch_size,
                epochs=config.local_epochs,
                steps=config.local_steps,
                generator=torch.Generator().manual_seed(seed),
            )
            result = train_batches(
                self.worker,
                self.client_optimizer,
                batches,
                device=self.device,
                loss_fn=self.loss_fn,
            )
            return result.num_examples, result.mean_loss
        if self.local_update is None:
            result = train_local(
                self.worker,
                self.client_optimizer,
                self.train_images,
                self.train_labels,
                self.partitions[client],
                epochs=config.local_epochs,
                steps=config.local_steps,
                batch_size=config.batch_size,
                generator=torch.Generator().manual_seed(seed),
                loss_fn=self.loss_fn,
            )
            return result.num_examples, result.mean_loss
        torch.manual_seed(seed)
        rows = torch.from_numpy(self.partitions[client]).to(self.train_images.device)
        examples = self.local_update(
            self.worker,
            self.client_optimizer,
            self.train_images.index_select(0, rows),
            self.train_labels.index_select(0, rows),
        )
        return examples, math.nan

    def _apply(self, update: dict[str, np.ndarray]) -> bool:
        return server_step(
            self.server_optimizer,
            self._aggregated(parameters=True),
            update,
            self._aggregated(parameters=False),
        )

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and loss of the global model."""
        if self.test_images is not None:
            result = evaluate(self.model, self.test_images, self.test_labels, loss_fn=self.loss_fn)
        elif self.test_data is not None:
            batches = self.test_data
            if isinstance(batches, torch.utils.data.Dataset):
                batches = torch.utils.data.DataLoader(batches, batch_size=1000)
            result = evaluate_batches(self.model, batches, device=self.device, loss_fn=self.loss_fn)
        else:
            raise ValueError("no test set was given")
        return float(result.accuracy), float(result.loss)

    def run(
        self, rounds: int, *, progress: bool = True, log: Callable[[str], None] | None = print
    ) -> list[dict[str, Any]]:
        """Run ``rounds`` more rounds with a progress bar per round; returns the history."""
        from tqdm.auto import tqdm

        for _ in range(rounds):
            bar = tqdm(
                total=self.config.clients_per_round,
                desc=f"round {self.round + 1}",
                unit="client",
                leave=False,
                disable=not progress,
            )
            metrics = self.run_round(progress=bar.update)
            bar.close()
            if log is not None:
                log(format_round(metrics))
        if self.has_test_data and "test_accuracy" not in self.history[-1]:
            accuracy, loss = self.evaluate()
            self.history[-1].update(test_accuracy=accuracy, test_loss=loss)
        return self.history

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the run exactly (model, optimizers, aggregator, round)."""
        return {
            "round": self.round,
            "model": self.model.state_dict(),
            "server_optimizer": self.server_optimizer.state_dict(),
            "aggregator_state": self.aggregator_state,
            "accountant": self.accountant.state_dict(),
            "history": self.history,
            "config": asdict(self.config),
            "local_buffers": self.local_buffers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the trainer must be built with the same setup)."""
        # A checkpoint from before a config field existed has that field's default.
        if {**asdict(FedAvgConfig()), **state["config"]} != asdict(self.config):
            raise ValueError("the checkpoint was written with another configuration")
        self.model.load_state_dict(state["model"])
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self.aggregator_state = state["aggregator_state"]
        self.accountant.load_state_dict(state["accountant"])
        self.local_buffers = dict(state.get("local_buffers", {}))
        self.history = list(state["history"])
        self.round = int(state["round"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint (atomically; see :mod:`aggkit_torch.checkpoint`)."""
        checkpoint.save(path, self.state_dict())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Resume from a checkpoint written by :meth:`save`.

        The file is read with ``torch.load(weights_only=True)``: a file that would need to run
        code to load is refused with :class:`~aggkit_torch.checkpoint.CheckpointError`, and
        nothing from it runs.
        """
        self.load_state_dict(checkpoint.load(path))


def format_round(metrics: dict[str, Any]) -> str:
    """One log line for a round: accuracy, loss, timings and the aggregator's measurements."""
    parts = [f"round {metrics['round']}"]
    if "test_accuracy" in metrics:
        parts.append(f"test accuracy {metrics['test_accuracy']:.4f}")
    if math.isfinite(metrics["train_loss"]):
        parts.append(f"train loss {metrics['train_loss']:.4f}")
    if "epsilon" in metrics:
        parts.append(
            f"epsilon {metrics['epsilon']:.3g} (delta {metrics['delta']:g}, {metrics['sampling']})"
        )
    parts.append(f"{metrics['round_seconds']:.1f}s (aggregate {metrics['aggregate_seconds']:.3f}s)")
    shown = {
        k: (f"{v:.4g}" if isinstance(v, float) else str(v))
        for k, v in metrics["measurements"].items()
    }
    if shown:
        parts.append(" ".join(f"{k}={v}" for k, v in shown.items()))
    if metrics["nonfinite_clients"]:
        parts.append(f"non-finite clients zeroed: {metrics['nonfinite_clients']}")
    if metrics.get("capped_clients"):
        parts.append(f"weights capped: {metrics['capped_clients']}")
    if metrics.get("dropped"):
        parts.append(f"dropped: {', '.join(str(d['client']) for d in metrics['dropped'])}")
    if not metrics.get("committed", True):
        parts.append(f"NOT COMMITTED ({metrics.get('failure')}): the model is unchanged")
    return " | ".join(parts)
