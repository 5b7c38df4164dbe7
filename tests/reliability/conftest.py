"""Reliability fixtures: a LifecycleManager over real servers or the embedded stack, provisioned."""

from __future__ import annotations

from tests.stack import STACKS, stack_fixtures

# Batches of 3: every fault and race in these suites crosses batch boundaries.
clock, settings, manager = stack_fixtures(STACKS, batch_size=3, whole_seconds=True, provision=True)
