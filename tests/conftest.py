"""Shared test settings.

Hypothesis profiles, chosen by the environment variable HYPOTHESIS_PROFILE:

- ``ci`` (default): few examples, derandomized (the same examples every run,
  so CI is reproducible), no deadline (shared CI machines are noisy);
- ``thorough``: many random examples, for local runs
  (``HYPOTHESIS_PROFILE=thorough python -m pytest tests``).
"""

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import standin  # tests/ is on sys.path: pytest puts this file's folder there

# One stand-in module, whichever name a test imports it by ("standin", or
# "tests.standin" from the repository root): two copies would be two unrelated
# device array types, each with its own event counters.
sys.modules.setdefault("tests.standin", standin)

# Training runs in tests, in process or as subprocesses, stay in one process unless a test asks for
# more: `train --procs auto` would start ranks under mpiexec wherever mpi4py is installed.
os.environ.setdefault("SLOTREF_PROCS", "1")

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    """A seeded NumPy generator for test data."""
    return np.random.default_rng(20200615)
