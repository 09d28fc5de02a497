"""The conformance checks in a project's own pytest suite.

In the project's ``conftest.py``::

    pytest_plugins = ["slotref.conformance.pytest_plugin"]

and in a test::

    def test_my_slot_attention_conforms(slotref_conformance):
        slotref_conformance(my_forward, grad=my_grad, dtype="float32")

The fixture runs ``slotref.conformance.check`` and fails the test with the
report (one line per check, the first differing line of Algorithm 1 and the
likely slip) if any check fails; it returns the report otherwise.
"""

from __future__ import annotations

import pytest

from slotref.conformance.checks import check


def assert_conforms(forward, grad=None, **options):
    """``check(forward, grad, **options)``; raises AssertionError with the report on a failure."""
    report = check(forward, grad, **options)
    report.raise_for_failure()
    return report


@pytest.fixture
def slotref_conformance():
    """A function ``(forward, grad=None, **options) -> Report`` that fails the test on a failed check."""
    return assert_conforms
