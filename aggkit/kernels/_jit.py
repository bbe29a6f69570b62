"""The one decorator every aggkit kernel uses, and the disk cache that keeps compiled kernels fresh.

Every ``@njit`` function in ``aggkit/kernels/`` is declared with :func:`kernel`, so compile options
live in one place. Importing this module imports numba; ``import aggkit`` never does (kernel
modules are loaded on first use, see ``aggkit/kernels/__init__.py``).

Disk cache
----------
Numba keys a cached kernel on the modification time of *its own* source file, so a kernel keeps
running a stale copy of a jitted helper that lives in another file after that helper is edited
(checked on numba 0.68: numba PR #8396 was deferred). aggkit shares helpers between kernel files
(the counter-based random generator, for one), so it registers its own cache locator for the
files of this package: the source stamp is a hash over *every* file in ``aggkit/kernels/``. Editing
any kernel file invalidates the cached code of all of them. The cache sits in the package's
``__pycache__`` when that is writable, else in numba's user-wide cache directory.

``AGGKIT_NUMBA_CACHE=0`` turns the disk cache off (the kernels then compile in each process).

Thread pool
-----------
Importing this module starts no thread and sets no environment variable (it only registers the
cache locator above). The first time :mod:`aggkit.kernels` loads a
kernel module (the first round that needs a kernel), it calls :func:`prepare_runtime`, which
starts numba's thread pool with libgomp's spin count raised to :data:`OMP_SPIN_COUNT` unless the
user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` (or something started the pool first); see
:func:`start_thread_pool`. A program that wants the pool up front calls ``prepare_runtime()``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

__all__ = [
    "CACHE",
    "MIN_ELEMENTS_PER_THREAD",
    "OMP_SPIN_COUNT",
    "kernel",
    "prepare_runtime",
    "run_tasks",
    "start_thread_pool",
    "thread_scratch",
    "threads_for",
]

_KERNEL_DIR = Path(__file__).resolve().parent


def _sources_stamp() -> str:
    """A hash of the name, size and contents of every Python file in this package."""
    digest = hashlib.sha256()
    for path in sorted(_KERNEL_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _install_locator() -> bool:
    """Register the cache locator for aggkit kernels; False if numba's internals have moved."""
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba layout changed
        return False
    base_classes = [
        getattr(caching, name, None) for name in ("InTreeCacheLocator", "UserWideCacheLocator")
    ]
    if any(cls is None for cls in base_classes) or not hasattr(caching, "CacheImpl"):
        return False  # pragma: no cover - numba layout changed
    stamp = _sources_stamp()

    def make(base):
        class _AggkitLocator(base):
            @classmethod
            def from_function(cls, py_func, py_file):
                if Path(py_file).resolve().parent != _KERNEL_DIR:
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self):
                return stamp

        _AggkitLocator.__name__ = f"Aggkit{base.__name__}"
        return _AggkitLocator

    locators = caching.CacheImpl._locator_classes
    if not any(cls.__name__.startswith("Aggkit") for cls in locators):
        # Ours go first, except that a user's NUMBA_CACHE_DIR still wins over the in-tree one.
        position = 1 if os.environ.get("NUMBA_CACHE_DIR") else 0
        for cls in reversed([make(b) for b in base_classes]):
            locators.insert(position, cls)
    return True


CACHE: bool = os.environ.get("AGGKIT_NUMBA_CACHE", "1") != "0" and _install_locator()

#: How many times numba's OpenMP threads poll for work before they sleep (libgomp's
#: ``GOMP_SPINCOUNT``; its own default is 300,000), unless the user chose a count or a policy.
OMP_SPIN_COUNT = 3_000_000
#: The environment variables by which a user chooses libgomp's waiting; aggkit then keeps out.
_USER_OMP_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def start_thread_pool(parallel=None) -> bool:
    """Start numba's thread pool, letting its OpenMP threads spin longer before they sleep.

    A parallel kernel ends at a barrier where the thread that finished first waits for the
    others. libgomp lets a waiting thread poll ``GOMP_SPINCOUNT`` times (300,000 by default, a few
    milliseconds) and then puts it to sleep. On a loaded machine, waking a sleeping thread can take
    longer than the kernel it is woken for, and a round launches several kernels in quick
    succession; a spin count of :data:`OMP_SPIN_COUNT` keeps the workers polling across those
    gaps. The price is idle polling of one core for a while after each parallel call, much as
    OpenBLAS's workers poll after a BLAS call. A much larger count kept polling through the pauses
    between rounds and slowed the BLAS calls that followed, so the count is bounded. The
    measurements behind this choice are in ``docs/benchmarks-history.md`` ("Thread pool spin
    count").

    libgomp reads ``GOMP_SPINCOUNT`` once, when numba loads it as it starts the pool. So this
    function sets the variable, starts the pool, and removes the variable again: OpenMP runtimes
    that load later (PyTorch bundles its own) keep their defaults. It does nothing when the user
    set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` (theirs applies), or when the pool is already
    running (then it is too late). Returns whether it set the spin count.

    ``parallel`` is numba's ``numba.np.ufunc.parallel`` module (a stand-in in tests).
    """
    if parallel is None:
        from numba.np.ufunc import parallel
    if getattr(parallel, "_is_initialized", True) or any(
        name in os.environ for name in _USER_OMP_SETTINGS
    ):
        return False
    os.environ["GOMP_SPINCOUNT"] = str(OMP_SPIN_COUNT)
    try:
        parallel._launch_threads()
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)
    return True


_runtime_lock = threading.Lock()
_runtime_ready = False


def prepare_runtime() -> None:
    """Set up numba's runtime for aggkit's kernels, once per process (later calls return at once).

    Starts the thread pool through :func:`start_thread_pool`. :mod:`aggkit.kernels` calls it when
    it first loads a kernel module, so that the pool starts with aggkit's spin count before any
    parallel kernel runs; importing aggkit or this module does not.
    """
    global _runtime_ready
    if _runtime_ready:
        return
    with _runtime_lock:
        if not _runtime_ready:
            start_thread_pool()
            _runtime_ready = True


def kernel(
    function=None,
    *,
    parallel: bool = False,
    fastmath_reassoc: bool = False,
    fastmath_contract: bool = False,
    inline: bool = False,
    helper: bool = False,
):
    """Compile ``function`` with aggkit's kernel options.

    ``nogil=True`` (callers may run kernels from threads), ``fastmath=False`` (results must match
    the NumPy twins and not depend on reassociation), ``error_model="numpy"`` (no Python
    exceptions for division by zero), and the disk cache described in the module docstring.
    ``parallel=True`` enables ``numba.prange``; parallel kernels split work into pieces whose size
    does not depend on the thread count and combine partial results in a fixed order, so their
    bits do not depend on ``NUMBA_NUM_THREADS``.

    ``fastmath_reassoc=True`` allows LLVM to reassociate floating-point operations (and nothing
    else: NaN and Inf keep their meaning). Use it only for a float reduction loop, which cannot
    vectorize otherwise; its summation order then depends on the compiled vector width, not on
    the thread count, and its twin test compares with a tolerance.

    ``fastmath_contract=True`` also lets LLVM fuse a multiply and an add into one FMA (one rounding
    instead of two). Use it with ``fastmath_reassoc`` in the same reduction loops only: it changes
    the last bits, which their tolerance-based twin tests allow.

    ``inline=True`` inlines a device function into its callers at the numba IR level. numba does
    not inline large helpers on its own, and a call left in a hot loop stops it from vectorizing
    (the Gaussian noise loop, for one, ran several times slower with its call left in).

    ``helper=True`` marks a function that only other kernels call: numba then compiles no Python
    entry point for it (the wrapper that unboxes every argument and boxes the result), which is
    part of every compilation's cost (about 0.2 s of CPU time of ``secure_aggregator()``'s first
    round with an empty cache for its five helpers; ``docs/benchmarks-history.md``, "Cold
    start"). Calling a helper from Python raises :class:`TypeError` (numba itself would jump to
    the missing entry point). No kernel gets a C-callable (``cfunc``) wrapper: aggkit calls none.
    """
    flags = {"reassoc"} if fastmath_reassoc else set()
    if fastmath_contract:
        flags.add("contract")
    fastmath = flags or False

    def decorate(fn):
        dispatcher = numba.njit(
            cache=CACHE,
            nogil=True,
            fastmath=fastmath,
            error_model="numpy",
            parallel=parallel,
            inline="always" if inline else "never",
            no_cfunc_wrapper=True,
            no_cpython_wrapper=helper,
        )(fn)
        if helper:
            dispatcher.__class__ = _HelperDispatcher
        return dispatcher

    return decorate if function is None else decorate(function)


class _HelperDispatcher(numba.core.registry.CPUDispatcher):
    """A ``kernel(helper=True)`` function: callable from kernels only (it has no Python entry)."""

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"{self.py_func.__qualname__} is a kernel helper without a Python entry point: "
            "call it from a kernel"
        )


#: Elements (matrix values read) below which a parallel kernel gets one more thread only per this
#: many: 64k float32 values take tens of microseconds, a thread's wake-up on a loaded machine up to
#: milliseconds (a Flower round of 6 small clients spent 20 ms in row_stats' thread hand-off).
MIN_ELEMENTS_PER_THREAD = 1 << 16


@contextmanager
def threads_for(tasks: int, elements: int | None = None) -> Iterator[None]:
    """Run the parallel kernels called inside on at most ``tasks`` threads, and, given the
    ``elements`` they read, on at most one per :data:`MIN_ELEMENTS_PER_THREAD` of them.

    Waking a sleeping worker thread for work it will not get can cost milliseconds on a busy
    machine, far more than a tiny kernel itself (a weight sum over a hundred clients, say). Every
    aggkit kernel's bits are independent of the thread count, so this changes no result.
    """
    if elements is not None:
        tasks = min(tasks, max(1, int(elements) // MIN_ELEMENTS_PER_THREAD))
    threads = numba.get_num_threads()
    if tasks >= threads:
        yield
        return
    numba.set_num_threads(max(1, int(tasks)))
    try:
        yield
    finally:
        numba.set_num_threads(threads)


# --- Serial kernels over fixed tasks, run on a small pool of Python threads -----------------------
#
# numba compiles a ``parallel=True`` kernel through its parfor passes, which cost 1-2 s of CPU time
# per kernel on the first call with an empty cache (0.1-0.8 s for the same body as a plain serial
# kernel; docs/benchmarks-history.md, "Cold start"). The kernels a preset always uses are serial
# ``nogil`` kernels over a range of fixed tasks (column blocks, pieces), and :func:`run_tasks`
# hands out ranges of tasks to the calling thread and to up to ``threads - 1`` helper threads.
# Which thread runs a task never changes its bits: tasks are fixed by the caller, not by the
# thread count, and each writes only its own outputs.


class _Job:
    """One :func:`run_tasks` call: ranges of tasks handed out in order to whichever thread asks.

    A thread asks for ``1 / (2 * threads)`` of the tasks left, but never more than
    ``1 / (4 * threads)`` of all of them, and at least one task: the first ranges are long (few
    calls, each a few microseconds of Python and GIL), the last ones single tasks, so the threads
    finish within one task of each other, and a thread that started late or runs slower (its core
    shared with another process) holds at most an eighth of the work at two threads.
    """

    __slots__ = (
        "args",
        "done",
        "error",
        "function",
        "lock",
        "next",
        "pending",
        "scratch",
        "threads",
        "total",
    )

    def __init__(self, function, total, threads, args, scratch=None):
        self.function = function
        self.total = total
        self.threads = threads
        self.args = args
        self.scratch = scratch
        self.lock = threading.Lock()
        self.next = 0
        self.pending = total
        # Held until the last task finishes; a bare lock costs a fraction of an Event (a lock and
        # a condition), which the calling thread builds before its first range.
        self.done = threading.Lock()
        self.done.acquire()
        self.error: BaseException | None = None

    def work(self, ranges: int | None = None) -> None:
        """Run ranges until none is left (or ``ranges`` of them)."""
        total, threads, lock = self.total, self.threads, self.lock
        longest = total // (4 * threads)
        args = None
        while ranges is None or ranges > 0:
            with lock:
                first = self.next
                if first >= total:
                    return
                stop = self.next = first + max(1, min(longest, (total - first) // (2 * threads)))
            if args is None:  # this thread's scratch, once it has work
                args = self.args
                if self.scratch is not None:
                    args = (*args, thread_scratch(*self.scratch))
            try:
                self.function(first, stop, *args)
            except BaseException as error:  # re-raised by the caller
                self.error = self.error or error
            with lock:
                self.pending -= stop - first
                if not self.pending:
                    self.done.release()
            if ranges is not None:
                ranges -= 1


class _Helpers:
    """Daemon threads that run queued jobs; started on demand, never more than asked for."""

    def __init__(self):
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def _loop(self) -> None:
        while True:
            self.queue.get().work()

    def post(self, job: _Job, helpers: int) -> None:
        if len(self.threads) < helpers:
            with self.lock:
                while len(self.threads) < helpers:
                    thread = threading.Thread(
                        target=self._loop, name=f"aggkit-kernel-{len(self.threads)}", daemon=True
                    )
                    thread.start()
                    self.threads.append(thread)
        for _ in range(helpers):
            self.queue.put(job)


_helpers = _Helpers()


def _reset_helpers_after_fork() -> None:
    global _helpers
    _helpers = _Helpers()  # the parent's threads do not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_helpers_after_fork)


#: Each thread's scratch arrays by (shape, dtype): see :func:`thread_scratch`.
_scratch = threading.local()
#: Scratch arrays a thread keeps (the oldest goes first).
_SCRATCH_KEYS = 8


def thread_scratch(shape: tuple[int, ...], dtype) -> np.ndarray:
    """This thread's scratch array of ``shape`` and ``dtype``: uninitialized, and the same array
    on every call from this thread with the same shape and dtype (until eight others were asked
    for).

    For :func:`run_tasks`' ``scratch``: a kernel that needs a buffer gets one from its caller
    instead of allocating it. Every ``np.empty`` or ``np.zeros`` in a kernel is a compilation of
    its own with an empty cache, and the first one of a process also pays for numba's array
    allocation code (together 0.2-0.25 s of CPU time of ``compression_aggregator()``'s and
    ``secure_aggregator()``'s first rounds; ``docs/benchmarks-history.md``, "Cold start", fourth
    pass); warm, the round allocates nothing.
    """
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = {}
    key = (tuple(shape), np.dtype(dtype))
    buf = arrays.get(key)
    if buf is None:
        if len(arrays) >= _SCRATCH_KEYS:
            del arrays[next(iter(arrays))]
        buf = arrays[key] = np.empty(key[0], key[1])
    return buf


def run_tasks(
    function,
    num_tasks: int,
    *args,
    elements: int | None = None,
    scratch: tuple[tuple[int, ...], object] | None = None,
) -> None:
    """Call the serial kernel ``function(first, stop, *args)`` over tasks ``0 .. num_tasks - 1``.

    The calling thread and up to ``numba.get_num_threads() - 1`` helper threads take contiguous
    ranges of tasks in order: long ranges first (``1 / (4 * threads)`` of the tasks), then
    ``1 / (2 * threads)`` of the tasks left, down to single tasks, so a thread that starts late
    (a busy machine) takes fewer and all finish within a task of each other. ``function`` must
    be a ``nogil`` kernel whose tasks are independent and write disjoint outputs; its results
    then do not depend on the thread count.
    The thread count follows numba's (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``,
    :func:`threads_for`), capped at ``num_tasks`` and, given the ``elements`` the call reads, at
    one thread per :data:`MIN_ELEMENTS_PER_THREAD`.

    With ``scratch=(shape, dtype)``, each thread passes its own :func:`thread_scratch` array of that
    shape and dtype as one more argument, ``function(first, stop, *args, buf)``: uninitialized
    (whatever an earlier call left there), so the kernel writes before it reads. Which thread
    runs a task, and so which buffer it gets, must not change a result.

    Example
    -------
    >>> import numpy as np
    >>> @numba.njit(nogil=True)  # aggkit's own kernels use @kernel
    ... def _double(first, stop, x):
    ...     for t in range(first, stop):
    ...         x[t] *= 2
    >>> x = np.arange(5.0)
    >>> run_tasks(_double, 5, x)
    >>> x
    array([0., 2., 4., 6., 8.])
    """
    num_tasks = int(num_tasks)
    if num_tasks <= 0:
        return
    threads = min(numba.get_num_threads(), num_tasks)
    if elements is not None:
        threads = min(threads, max(1, int(elements) // MIN_ELEMENTS_PER_THREAD))
    if scratch is not None and threads <= 1:
        args = (*args, thread_scratch(*scratch))
    if threads <= 1:
        function(0, num_tasks, *args)
        return
    job = _Job(function, num_tasks, threads, args, scratch)
    if not getattr(function, "overloads", True):
        # A kernel's first call compiles it: in the calling thread (the helpers would wait).
        job.work(ranges=1)
    _helpers.post(job, threads - 1)
    job.work()
    job.done.acquire()
    # A helper that had not woken by now still finds this job in its queue later: drop the
    # arrays it references, or a pooled result buffer (aggkit._buffers) would look held.
    job.args = ()
    if job.error is not None:
        raise job.error
