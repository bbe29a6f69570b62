"""The kernel disk cache notices edits to helpers in other kernel files.

Numba keys its cache on the caller's own file only, so a cached kernel keeps calling a stale copy
of a helper after the helper's file changes. aggkit's cache locator stamps every kernel with a
hash of all kernel files; this test edits a helper between two processes and expects the change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import aggkit


def _call(root: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(root), AGGKIT_NUMBA_CACHE="1")
    env.pop("NUMBA_CACHE_DIR", None)
    code = "from aggkit.kernels import caller_mod; print(caller_mod.caller(1))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root
    )
    return done.stdout.strip()


# A helper with a Python entry point, and one without (kernel(helper=True): callable from kernels
# only), whose code the caller's cache entry holds all the same.
@pytest.mark.parametrize("decorator", ["@kernel", "@kernel(helper=True)"])
def test_editing_a_helper_in_another_file_invalidates_cached_callers(tmp_path, decorator):
    package = tmp_path / "aggkit"
    shutil.copytree(
        Path(aggkit.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    kernels = package / "kernels"
    helper = kernels / "helper_mod.py"
    helper.write_text(
        textwrap.dedent(
            """
        from aggkit.kernels._jit import kernel

        @kernel
        def helper(x):
            return x + 1
        """
        ).replace("@kernel", decorator)
    )
    (kernels / "caller_mod.py").write_text(
        textwrap.dedent(
            """
        from aggkit.kernels._jit import kernel
        from aggkit.kernels.helper_mod import helper

        @kernel
        def caller(x):
            return helper(x) * 2
        """
        )
    )
    assert _call(tmp_path) == "4"
    assert any((kernels / "__pycache__").glob("caller_mod.caller-*.nbi"))  # it was cached
    helper.write_text(helper.read_text().replace("x + 1", "x + 100"))
    assert _call(tmp_path) == "202"


def test_a_helper_refuses_a_call_from_python_and_runs_inside_kernels():
    from aggkit.kernels import row_stats

    with pytest.raises(TypeError, match="_sum_sq_keys32_8 is a kernel helper"):
        row_stats._sum_sq_keys32_8(np.zeros(3, np.float32))
    stats = row_stats.row_stats(
        np.array([[1.0, -2.0, 3.0]], np.float32), np.array([0, 3]), with_minmax=True
    )  # calls the helper from a kernel
    assert stats.tensor_min.tolist() == [[-2.0]] and stats.tensor_max.tolist() == [[3.0]]


def test_every_kernel_closure_holds_plain_values_so_its_cache_key_is_stable():
    """numba's disk cache keys a closure on its cells' pickled values. A cell holding a helper
    (a dispatcher) pickles differently in every process, so such a kernel would compile again in
    each one, filled cache or not: every case of aggkit's kernel factories holds bools and
    integers only."""
    import itertools

    from numba.core.dispatcher import Dispatcher

    from aggkit.kernels import discretize, quantize, row_stats, weighted_sum

    cases = [
        *(weighted_sum._sum_kernel(divide) for divide in (False, True)),
        *(row_stats._partials_kernel(*c) for c in itertools.product((False, True), repeat=3)),
        *(quantize._row_sum_kernel(*c) for c in itertools.product((False, True), repeat=3)),
        *(discretize._float_kernel(*c) for c in itertools.product((False, True), repeat=2)),
    ]
    for module in (discretize, quantize, row_stats):
        cases += [d for d in vars(module).values() if isinstance(d, Dispatcher)]
    closures = [d for d in cases if d.py_func.__closure__]
    assert len(closures) >= 22  # the factories' cases and the helpers made by factories
    for dispatcher in closures:
        values = [cell.cell_contents for cell in dispatcher.py_func.__closure__]
        assert all(type(v) in (bool, int) for v in values), (dispatcher, values)
