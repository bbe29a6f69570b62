"""start_thread_pool: a longer libgomp spin for numba's pool only, never over the user's; run_tasks:
serial kernels over fixed tasks on aggkit's helper threads."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import types

import pytest

from aggkit.kernels import _jit


def _stand_in(seen: list):
    parallel = types.SimpleNamespace(_is_initialized=False)

    def launch():
        seen.append(os.environ.get("GOMP_SPINCOUNT"))
        parallel._is_initialized = True

    parallel._launch_threads = launch
    return parallel


def test_sets_the_spin_count_while_the_pool_starts_and_removes_it(monkeypatch):
    for name in _jit._USER_OMP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    seen: list = []
    parallel = _stand_in(seen)
    assert _jit.start_thread_pool(parallel)
    assert seen == [str(_jit.OMP_SPIN_COUNT)]
    assert "GOMP_SPINCOUNT" not in os.environ
    assert not _jit.start_thread_pool(parallel)  # already running: too late, nothing happens
    assert seen == [str(_jit.OMP_SPIN_COUNT)]


@pytest.mark.parametrize("name", ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"])
def test_the_users_setting_wins(monkeypatch, name):
    monkeypatch.setenv(name, "passive" if name == "OMP_WAIT_POLICY" else "1000")
    seen: list = []
    assert not _jit.start_thread_pool(_stand_in(seen))
    assert seen == []
    assert os.environ[name] in ("passive", "1000")


_PROBE = """
import os, time, numpy as np, numba
from aggkit import kernels
kernels.divide_cast  # the first kernel module aggkit loads starts numba's pool

@numba.njit(parallel=True)  # the prange kernels (distances, quantize, ...) use that pool
def halve(x):
    for i in numba.prange(x.size):
        x[i] *= 0.5

halve(np.ones(1 << 17))
assert numba.threading_layer() == "omp", numba.threading_layer()
time.sleep(0.3)
burnt = []
for _ in range(3):
    halve(np.ones(1 << 17))
    start = time.process_time()
    time.sleep(0.15)
    burnt.append(time.process_time() - start)
print(sorted(burnt)[1], "GOMP_SPINCOUNT" in os.environ)
"""


def _burnt(env_extra: dict) -> tuple[float, bool]:
    env = {k: v for k, v in os.environ.items() if k not in _jit._USER_OMP_SETTINGS}
    env.update(env_extra)
    env["NUMBA_NUM_THREADS"] = "2"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=False
    )
    if "threading_layer" in done.stderr or "AssertionError" in done.stderr:
        pytest.skip(f"numba's threading layer is not OpenMP here: {done.stderr[-200:]}")
    assert done.returncode == 0, done.stderr
    seconds, present = done.stdout.split()
    return float(seconds), present == "True"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_numbas_openmp_workers_really_spin_longer():
    # The idle worker's CPU time in the 0.15 s after a parallel call: about 80 ms with aggkit's
    # count, about 4 ms with libgomp's default (which a user's own setting restores).
    ours, leaked = _burnt({})
    default, _ = _burnt({"GOMP_SPINCOUNT": "300000"})
    assert not leaked
    assert ours > 0.03 and default < 0.02, (ours, default)


_TRIGGER = """
import sys
from numba.np.ufunc import parallel
import aggkit
from aggkit.kernels import _jit, limits
print(parallel._is_initialized, "numba" in sys.modules)
from aggkit import kernels
kernels.divide_cast
print(parallel._is_initialized)
"""


def test_the_pool_starts_when_the_first_kernel_module_loads_not_at_import():
    env = {k: v for k, v in os.environ.items() if k not in _jit._USER_OMP_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", _TRIGGER], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    after_import, after_kernel = done.stdout.splitlines()
    # Importing aggkit, _jit (numba itself) and the plain-Python limits starts nothing ...
    assert after_import == "False True"
    # ... the first kernel module the package loads does.
    assert after_kernel == "True"


def test_threads_for_gives_small_work_one_thread_per_min_elements():
    import numba

    threads = numba.get_num_threads()
    per = _jit.MIN_ELEMENTS_PER_THREAD
    with _jit.threads_for(64, elements=10):
        assert numba.get_num_threads() == 1  # a tiny kernel wakes no worker
    with _jit.threads_for(64, elements=2 * per):
        assert numba.get_num_threads() == min(2, threads)
    with _jit.threads_for(64, elements=1000 * per):
        assert numba.get_num_threads() == threads
    with _jit.threads_for(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == threads


# --- run_tasks: serial kernels over fixed tasks on Python threads ---------------------------------


def _recorder():
    import threading

    calls: list = []
    lock = threading.Lock()

    def function(first, stop, out, offset):
        with lock:
            calls.append((first, stop, threading.current_thread().name))
        for t in range(first, stop):
            out[t] += t + offset

    return function, calls


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 8, 9, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_run_tasks_runs_every_task_exactly_once_in_contiguous_ranges(tasks, threads):
    import numba
    import numpy as np

    function, calls = _recorder()
    out = np.zeros(tasks)
    with _jit.threads_for(threads):
        _jit.run_tasks(function, tasks, out, 0.5)
    assert np.array_equal(out, np.arange(tasks) + 0.5)  # each task once, with the extra args
    ranges = sorted((first, stop) for first, stop, _ in calls)
    assert ranges[0][0] == 0 and ranges[-1][1] == tasks
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # no gap, no overlap
    used = min(threads, tasks, numba.get_num_threads())
    if used == 1:
        assert ranges == [(0, tasks)]
    else:  # 1/(2 used) of the tasks left, at most 1/(4 used) of all: long first, one task last
        size = [
            max(1, min(tasks // (4 * used), (tasks - first) // (2 * used))) for first, _ in ranges
        ]
        assert [stop - first for first, stop in ranges] == size
        assert ranges[-1][1] - ranges[-1][0] == 1
    if threads == 1 or tasks == 1:
        assert {name for *_, name in calls} == {"MainThread"}  # no helper woken


def test_run_tasks_gives_small_work_one_thread():
    import numpy as np

    function, calls = _recorder()
    _jit.run_tasks(function, 64, np.zeros(64), 0.0, elements=_jit.MIN_ELEMENTS_PER_THREAD)
    assert calls == [(0, 64, "MainThread")]
    _jit.run_tasks(function, 0, np.zeros(0), 0.0)  # nothing to do: no call
    assert len(calls) == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_run_tasks_scratch_is_each_threads_own_buffer_reused_across_calls(threads):
    """``scratch=(shape, dtype)``: one more argument, this thread's array of that shape and dtype
    (no two threads share one; the same array again on the next call), uninitialized."""
    import threading

    import numpy as np

    seen: dict = {}
    lock = threading.Lock()

    def function(first, stop, out, buf):
        with lock:
            seen.setdefault(threading.current_thread().name, set()).add(id(buf))
        assert buf.shape == (3, 5) and buf.dtype == np.uint32
        for t in range(first, stop):
            buf[0, 0] = t  # a task writes its scratch before it reads it
            out[t] = buf[0, 0] + 1

    out = np.zeros(64)
    with _jit.threads_for(threads):
        for _ in range(3):
            _jit.run_tasks(function, 64, out, scratch=((3, 5), np.uint32))
    assert np.array_equal(out, np.arange(64) + 1.0)
    assert all(len(ids) == 1 for ids in seen.values())  # one buffer per thread, every call
    assert len(set().union(*seen.values())) == len(seen)  # and no buffer shared by two threads
    assert next(iter(seen["MainThread"])) == id(_jit.thread_scratch((3, 5), np.uint32))
    assert _jit.thread_scratch((3, 5), np.float64) is not _jit.thread_scratch((3, 5), np.uint32)


def test_a_finished_run_tasks_call_keeps_no_reference_to_its_arrays(monkeypatch):
    """A job posted to helpers that never woke stays queued: it must not keep the call's arrays
    alive, or aggkit._buffers would see a free result buffer as held (a flaky buffer-reuse test
    in CI showed it)."""
    import numba
    import numpy as np

    if numba.get_num_threads() < 2:
        pytest.skip("needs two threads")
    queued = []
    monkeypatch.setattr(_jit._helpers, "post", lambda job, helpers: queued.append(job))
    out = np.zeros(8)
    before = sys.getrefcount(out)

    def function(first, stop, out):
        for t in range(first, stop):
            out[t] = t

    with _jit.threads_for(2):
        _jit.run_tasks(function, 8, out)
    assert queued, "the job was not posted to the helpers"
    assert np.array_equal(out, np.arange(8.0))  # the calling thread ran every range
    assert sys.getrefcount(out) == before


def test_run_tasks_raises_what_a_task_raised_after_the_others_finished():
    import numpy as np

    out = np.zeros(16)

    def function(first, stop, out):
        for t in range(first, stop):
            if t == 9:
                raise ZeroDivisionError(f"task {t}")
            out[t] = 1

    import numba

    with pytest.raises(ZeroDivisionError, match="task 9"):
        _jit.run_tasks(function, 16, out)
    if numba.get_num_threads() > 1:
        # The range holding task 9 stopped there; every other range ran before the raise.
        skipped = np.flatnonzero(out == 0)
        assert skipped[0] == 9 and np.array_equal(skipped, np.arange(9, 9 + skipped.size))
        assert out[:9].all() and out[-1] == 1 and skipped.size < 7
    else:
        assert out.sum() == 9  # one call over all tasks, stopped at task 9
    _jit.run_tasks(lambda first, stop, out: out.__setitem__(slice(first, stop), 2), 16, out)
    assert (out == 2).all()  # the helpers survived


_FORKED = """
import os, numpy as np, numba
from aggkit import kernels
m = np.ones((8, 1 << 18), np.float32)
kernels.weighted_sum.weighted_row_sum(m, np.ones(8), np.zeros(1 << 18))  # helpers started
pid = os.fork()
if pid == 0:  # the helper threads do not exist in the child: the pool must start anew
    acc = kernels.weighted_sum.weighted_row_sum(m, np.ones(8), np.zeros(1 << 18))
    os._exit(0 if acc[0] == 8 else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_run_tasks_works_in_a_forked_child():
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, "-c", _FORKED], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_run_tasks_compiles_a_new_kernel_in_the_calling_thread():
    import threading

    import numba
    import numpy as np

    compiled_in: list = []

    @numba.njit(nogil=True)
    def fill(first, stop, out):
        for t in range(first, stop):
            out[t] = t

    class Recorder:  # stands in for the dispatcher, which compiles on its first call
        overloads = fill.overloads

        def __call__(self, first, stop, out):
            if not fill.overloads:
                compiled_in.append(threading.current_thread().name)
            fill(first, stop, out)

    out = np.zeros(64)
    _jit.run_tasks(Recorder(), 64, out)
    assert compiled_in == ["MainThread"]
    assert np.array_equal(out, np.arange(64))
