import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
import rlm_core.cleanup.documents as docs_mod
import rlm_core.cleanup.cache as cache_mod
import rlm_core.cleanup.vectors as vec_mod
from rlm_core.policy import DocumentVerdict, CacheAction
from rlm_core.audit import AuditLog
from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore
from tests.reliability.test_state_machine import LifecycleMachine, embedded  # noqa

def m_inflight(mp):
    orig = docs_mod.document_verdict
    mp.setattr(docs_mod, "document_verdict", lambda d, r: DocumentVerdict.CANDIDATE if orig(d, r) is DocumentVerdict.IN_FLIGHT else orig(d, r))
def m_refs(mp):
    orig = SqliteMetadataStore.active_references
    def f(self, ids, since):
        return orig(self, ids, since) - set(list(ids)[:1])
    mp.setattr(SqliteMetadataStore, "active_references", f)
def m_cache(mp):
    orig = cache_mod.cache_action
    mp.setattr(cache_mod, "cache_action", lambda k, t: (CacheAction.UNLINK, 0) if k.ttl_seconds > 0 else orig(k, t))
def m_audit(mp):
    orig = AuditLog.record
    mp.setattr(AuditLog, "record", lambda self, e: orig(self, e[1:]))
def m_dry(mp):
    orig = docs_mod._count
    mp.setattr(docs_mod, "_expire_batch", docs_mod._expire_batch)
    mp.setattr(type(docs_mod.Sweep), "__name__", "Sweep")
    mp.setattr(docs_mod.Sweep, "dry_run", property(lambda self: False))
def m_vectors(mp):
    mp.setattr(vec_mod, "is_upload_session", lambda s, d: False)
def m_nodelete(mp):
    mp.setattr(docs_mod, "_delete_cascade", lambda *a: None)

@pytest.mark.parametrize("mut", [m_inflight, m_refs, m_cache, m_audit, m_dry, m_vectors, m_nodelete])
def test_mutant(mut, embedded, monkeypatch):
    stores, base, workdir = embedded
    mut(monkeypatch)
    with pytest.raises(AssertionError) as e:
        run_state_machine_as_test(lambda: LifecycleMachine(stores, base, workdir), settings=settings(settings.get_profile("ci"), max_examples=60))
    print(mut.__name__, "CAUGHT:", str(e.value).splitlines()[-1][:200])
