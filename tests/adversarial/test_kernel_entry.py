"""Every kernel entry point refuses malformed arguments before compiled code runs (item 8).

The calls run in a child process (:mod:`tests.adversarial.kernel_cases`), since before the checks
some of them killed the interpreter; a crash is recorded against its case and the child resumes
with the next one, so one run covers every case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.adversarial import kernel_cases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = kernel_cases.case_ids()


@pytest.fixture(scope="module")
def outcomes() -> dict[int, dict]:
    results: dict[int, dict] = {}
    first = 0
    while first < len(CASES):
        done = subprocess.run(
            [sys.executable, "-m", "tests.adversarial.kernel_cases", str(first)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        started = None
        for line in done.stdout.splitlines():
            record = json.loads(line)
            if record.get("start"):
                started = record["index"]
            else:
                results[record["index"]] = record
                started = None
        if started is None:
            break
        results[started] = {"kind": f"crash (exit code {done.returncode})", "message": ""}
        first = started + 1
    return results


@pytest.mark.parametrize(
    ("index", "entry", "case", "argument"),
    [(i, *c) for i, c in enumerate(CASES)],
    ids=[f"{entry}: {case}" for entry, case, _ in CASES],
)
def test_malformed_call_is_refused_naming_the_argument(outcomes, index, entry, case, argument):
    outcome = outcomes[index]
    assert outcome.get("clean"), f"{entry} ({case}): {outcome['kind']} {outcome['message']}"
    assert argument in outcome["message"], outcome["message"]


def test_every_public_kernel_entry_point_has_a_case():
    import importlib
    import inspect
    import pkgutil

    import aggkit.kernels as package

    covered = {entry for entry, _, _ in CASES}
    missing = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"aggkit.kernels.{info.name}")
        for name in getattr(module, "__all__", ()):
            fn = getattr(module, name)
            # Python functions that take arrays; compiled scalar helpers, twins and the argument
            # checks themselves are not entries.
            if not inspect.isfunction(fn) or name.endswith("_numpy") or name.startswith("check_"):
                continue
            params = inspect.signature(fn).parameters
            if any(p in params for p in ("matrix", "out", "acc", "x", "values", "words", "total")):
                if name not in covered:
                    missing.append(f"{info.name}.{name}")
    assert not missing, missing
