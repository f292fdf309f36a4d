"""Pure quorum arithmetic and the safety rules for etcd membership changes.

Only voters count towards quorum; learners replicate the log but never vote. The ``can_*``
functions return why a change is refused, or None when it is safe.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from kubeha.etcd.gateway import EtcdMember, member_label

PROMOTE_READY = 0.9  # etcd promotes a learner only once it has this share of the leader's log


def quorum(voters: int) -> int:
    """How many of ``voters`` (>= 1) must agree for raft to commit."""
    if voters < 1:
        raise ValueError(f"a cluster has at least one voter, not {voters}")
    return voters // 2 + 1


def voters(members: Sequence[EtcdMember]) -> list[EtcdMember]:
    return [m for m in members if not m.is_learner]


def voters_after(members: Sequence[EtcdMember], *, add_voter: bool = False,
                 promote: int | None = None, remove: int | None = None) -> int:
    """The number of voters once a member is added as a voter, the learner ``promote``
    is promoted, or the member ``remove`` is removed (ids not in ``members`` change
    nothing; adding a learner changes nothing either)."""
    count = len(voters(members)) + add_voter
    for member in members:
        if member.id == promote and member.is_learner:
            count += 1
        if member.id == remove and not member.is_learner:
            count -= 1
    return count


def tolerates_failures(voters_total: int, healthy: int) -> int:
    """How many of the ``healthy`` voters may still fail with quorum kept; negative when
    quorum is already lost (by that many)."""
    return healthy - quorum(voters_total)


def can_remove(members: Sequence[EtcdMember], healthy_ids: Collection[int], target_id: int,
               leader_id: int) -> str | None:
    """Refuse to remove the leader (move leadership first), the last voter, or a voter
    whose removal leaves fewer healthy voters than the smaller cluster's quorum."""
    target = next((m for m in members if m.id == target_id), None)
    if target is None:
        return f"{target_id:x} is not a member"
    if target.is_learner:
        return None  # a learner carries no vote
    name = member_label(target)
    if target_id == leader_id:
        return f"{name} is the leader: move leadership to another member first"
    remaining = voters_after(members, remove=target_id)
    if remaining == 0:
        return f"{name} is the last voter"
    healthy = sum(1 for m in voters(members) if m.id in healthy_ids and m.id != target_id)
    if healthy < quorum(remaining):
        return (f"removing {name} leaves {healthy} healthy of {remaining} voters, "
                f"below the quorum of {quorum(remaining)}")
    return None


def can_add_learner(members: Sequence[EtcdMember]) -> str | None:
    """Refuse while a learner exists: etcd allows one learner at a time."""
    learners = [member_label(m) for m in members if m.is_learner]
    if learners:
        return f"learner {', '.join(learners)} exists: promote or remove it first"
    return None


def can_promote(progress: float) -> str | None:
    """Refuse to promote a learner that has less than 90% of the leader's log."""
    if progress < PROMOTE_READY:
        # rounded down: "90%" must never be shown for a refused 0.899
        return (f"the learner has {math.floor(progress * 100)}% of the leader's log, "
                f"promotion needs {PROMOTE_READY:.0%}")
    return None
