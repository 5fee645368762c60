"""Single-writer jobs: a coordination.k8s.io/v1 Lease through the real client, against
the fake API server's optimistic concurrency (409 on a stale resourceVersion)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.controlplane.k8s.client import KubeAccess
from gateway.controlplane.k8s.lease import LeaseLock, LeaseUnavailable
from tests.kubefake import LEASES, FakeKube


@pytest.fixture
async def access(kubeconfig: Path) -> AsyncIterator[KubeAccess]:
    access = KubeAccess(str(kubeconfig))
    yield access
    await access.aclose()


def lock(access: KubeAccess, who: str, duration: int = 15) -> LeaseLock:
    return LeaseLock.from_access(access, "prod/rollout-chat", who, duration=duration)


def holder(kube: FakeKube) -> str | None:
    lease = kube.get(LEASES, "prod", "rollout-chat")
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_of_contenders_racing_exactly_one_acquires(
    kube: FakeKube, access: KubeAccess
) -> None:
    locks = [lock(access, f"replica-{i}") for i in range(5)]
    won = await asyncio.gather(*(lk.try_acquire() for lk in locks))
    assert sum(won) == 1
    winner = locks[won.index(True)].identity
    assert holder(kube) == winner
    # Everyone reads the holder and keeps out; only the holder renews.
    again = await asyncio.gather(*(lk.try_acquire() for lk in locks))
    assert [lk.identity for lk, ok in zip(locks, again, strict=True) if ok] == [winner]
    assert all(lk.last_holder == winner for lk in locks)


async def test_a_stale_write_gets_409_and_loses(kube: FakeKube, access: KubeAccess) -> None:
    a, b = lock(access, "a", duration=1), lock(access, "b", duration=1)
    assert await a.try_acquire()
    lease = kube.get(LEASES, "prod", "rollout-chat")
    assert lease is not None
    lease["spec"]["holderIdentity"] = ""  # released, so both may take it...
    kube.apply(lease)
    # ...and both read the same version (the fake answers both reads together, however
    # the machine schedules them); the API server accepts only the first write.
    kube.hold_reads("/leases/rollout-chat", 2)
    results = await asyncio.gather(a.try_acquire(), b.try_acquire())
    assert sorted(results) == [False, True]
    assert any(r.status == 409 for r in kube.served("PUT", "/leases/rollout-chat"))
    assert holder(kube) in ("a", "b")


async def test_a_held_lease_is_taken_over_only_after_it_expires(
    kube: FakeKube, access: KubeAccess
) -> None:
    a, b = lock(access, "a", duration=1), lock(access, "b", duration=1)
    assert await a.try_acquire()
    assert not await b.try_acquire()  # b starts its own clock on a's record
    assert await a.renew()  # a renewed: a new record, b's clock starts again
    await asyncio.sleep(0.6)
    assert not await b.try_acquire()
    await asyncio.sleep(1.1)  # a stopped renewing: by b's clock the record is stale
    assert await b.try_acquire()
    assert holder(kube) == "b"
    lease = kube.get(LEASES, "prod", "rollout-chat")
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    assert not await a.renew(), "the old holder learns it lost the lease"


async def test_release_hands_over_at_once(kube: FakeKube, access: KubeAccess) -> None:
    a, b = lock(access, "a"), lock(access, "b")
    assert await a.try_acquire()
    assert not await b.try_acquire()
    await a.release()
    assert holder(kube) is None
    assert await b.try_acquire()
    await a.release()  # not a's any more: releasing does nothing
    assert holder(kube) == "b"


async def test_held_waits_renews_and_reports_loss(kube: FakeKube, access: KubeAccess) -> None:
    a, b = lock(access, "a", duration=3), lock(access, "b", duration=3)
    async with a.held(renew_every=0.1) as hold_a:
        with pytest.raises(LeaseUnavailable, match="held by a"):
            async with b.held(wait=0.3, retry_every=0.1):
                pass
        await asyncio.sleep(0.35)
        renewals = kube.served("PUT", "/leases/rollout-chat")
        assert len(renewals) >= 3
        assert not hold_a.lost.is_set()
    assert holder(kube) is None  # released on exit

    async with a.held(renew_every=0.05) as hold_a:
        # Someone else writes the Lease (an operator forcing a handover): a must stop.
        lease = kube.get(LEASES, "prod", "rollout-chat")
        assert lease is not None
        lease["spec"]["holderIdentity"] = "operator"
        kube.apply(lease)
        await asyncio.wait_for(hold_a.lost.wait(), 5)
    assert holder(kube) == "operator", "a lost hold is not released over the new holder"
