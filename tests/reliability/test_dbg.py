import collections
import tests.reliability.test_state_machine as m
from tests.reliability.test_state_machine import embedded  # noqa
from tests.reliability import faults
cnt = collections.Counter()
orig = m.LifecycleMachine.checked_cleanup
def wrapped(self, resource, dry_run, cap, plan):
    cnt[(plan.crash_after is not None, plan.down is not None)] += 1
    orig(self, resource, dry_run, cap, plan)
    cnt[("inj", bool(plan.injected))] += 1
m.LifecycleMachine.checked_cleanup = wrapped
def test_x(embedded):
    m.test_lifecycle_state_machine(embedded)
    print(cnt)
