"""start_thread_pool: a longer libgomp spin for numba's pool only, never over the user's."""

from __future__ import annotations

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
kernels.divide_cast.divide_cast(np.ones(1 << 17), 2.0, np.empty(1 << 17), block=1 << 16)
assert numba.threading_layer() == "omp", numba.threading_layer()
time.sleep(0.3)
burnt = []
for _ in range(3):
    kernels.divide_cast.divide_cast(np.ones(1 << 17), 2.0, np.empty(1 << 17), block=1 << 16)
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
