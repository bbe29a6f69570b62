"""The adversarial matrix holds (see :mod:`tests.adversarial.matrix`): every public factory gives
every malformed input a clear error or the correct result, leaves the state passed in unchanged,
and stays usable."""

from __future__ import annotations

import inspect

import pytest

import aggkit as ak
from tests.adversarial import matrix as M

#: Failures found by the matrix in other areas, reported and pinned here until fixed (strict:
#: the test fails once they pass, so that the entry is removed).
KNOWN: dict = {}


@pytest.mark.parametrize("subject", M.SUBJECTS, ids=[s.name for s in M.SUBJECTS])
def test_every_input_gives_a_clear_error_or_the_correct_result(subject):
    failures = []
    for item in M.INPUTS:
        if (subject.name, item.name) in KNOWN:
            continue
        outcome = M.run_case(subject, item)
        if not outcome.ok:
            failures.append(f"{item.name}: {outcome.detail}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("name", "item"), list(KNOWN), ids=[f"{n} / {i}" for n, i in KNOWN])
def test_known_failures_reported_elsewhere(name, item):
    subject = next(s for s in M.SUBJECTS if s.name == name)
    outcome = M.run_case(subject, next(i for i in M.INPUTS if i.name == item))
    if not outcome.ok:
        pytest.xfail(KNOWN[(name, item)])
    pytest.fail(f"fixed: remove {name} / {item} from KNOWN")


def test_the_matrix_covers_every_public_factory_with_at_least_30_inputs():
    factories = {
        name
        for name in ak.__all__
        if inspect.isfunction(getattr(ak, name))
        and "Factory" in str(inspect.signature(getattr(ak, name)).return_annotation)
    }
    covered = {s.name.split(" ")[0] for s in M.SUBJECTS}
    assert factories <= covered, factories - covered
    assert len(M.INPUTS) >= 30
