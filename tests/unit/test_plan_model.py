"""Plans: JSON round trip, no secrets, and the text, Markdown and JSON views."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kubeha.hosts import BackupSet
from kubeha.plan import (
    Change, ChangeKind, Plan, PlanError, Step, inventory_digest, new_operation_id, plan_json, plan_markdown,
    plan_text,
)

PLAN = Plan(
    operation="etcd-replace", operation_id="etcd-replace-20240501-101500-abcd",
    arguments={"member": "m3", "with": "m4"}, created=datetime(2024, 5, 1, 10, 15, tzinfo=timezone.utc),
    inventory_digest=inventory_digest('{"cluster": "toy"}'),
    steps=(
        Step(id="add-m4", kind="etcd-add-member", title="Add m4 to etcd as a learner", hosts=("m4",),
             changes=(Change(kind=ChangeKind.ETCD_MEMBER, target="m4", after="learner https://10.0.0.4:2380"),
                      Change(kind=ChangeKind.FILE, target="/etc/etcd/etcd.conf", host="m4", after="sha256:ab12")),
             safety_checks=("etcd quorum", "etcd no alarms"), verification="m4 is a learner in sync",
             rollback="remove member m4", estimated_seconds=90, arguments={"peer_url": "https://10.0.0.4:2380"}),
        Step(id="drop-m3", kind="etcd-remove-member", title="Remove m3 from etcd", hosts=("m3",),
             changes=(Change(kind=ChangeKind.ETCD_MEMBER, target="m3", before="voter"),
                      Change(kind=ChangeKind.LB_BACKEND, target="apiservers/m3", host="lb1", before="up")),
             safety_checks=("etcd quorum",), verification="m3 is no member", estimated_seconds=30,
             reversible=False, rollback="re-add m3 by hand from a snapshot"),
    ),
)


def test_a_plan_survives_json():
    assert Plan.from_json(plan_json(PLAN)) == PLAN
    assert PLAN.estimated_seconds == 120


def test_a_plan_holding_a_key_is_refused():
    # Decision: refused, not redacted: a plan is what operators approve, so it is never rewritten.
    key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"
    fields = PLAN.model_dump() | {"arguments": {"ca_key": key}}
    with pytest.raises(PlanError, match="looks like a PEM private key; plans must never carry secrets"):
        Plan.build(**fields)
    tampered = json.loads(plan_json(PLAN))
    tampered["steps"][0]["arguments"]["token"] = "token: eyJhbGciOiJSUzI1NiIs"
    with pytest.raises(PlanError, match="looks like a kubeconfig key or token"):
        Plan.from_json(json.dumps(tampered))


def test_step_ids_are_unique():
    with pytest.raises(PlanError, match="step ids repeat: add-m4"):
        Plan.build(**(PLAN.model_dump() | {"steps": [PLAN.steps[0], PLAN.steps[0]]}))


def test_operation_ids_name_backup_sets():
    operation_id = new_operation_id("etcd replace", datetime(2024, 5, 1, 10, 15, tzinfo=timezone.utc))
    assert operation_id.startswith("etcd-replace-20240501-101500-")
    assert BackupSet(operation_id).operation_id == operation_id


def test_the_markdown_runbook_fits_a_change_ticket():
    lines = plan_markdown(PLAN).splitlines()
    assert lines[0] == "# etcd-replace: etcd-replace-20240501-101500-abcd"
    for line in [
        "| operation | etcd-replace member=m3 with=m4 |",
        "| steps | 2, about 2 min |",
        "- **etcd-member** (2)",
        "  - `etcd-member m4: absent -> learner https://10.0.0.4:2380`",
        "- **lb-backend** (1)",
        "### 1. Add m4 to etcd as a learner",
        "- Step: `add-m4` (etcd-add-member), estimated 1 min 30 s",
        "  - [ ] etcd quorum",
        "  - `file /etc/etcd/etcd.conf on m4: absent -> sha256:ab12`",
        "- Verification: m4 is a learner in sync",
        "- Rollback: remove member m4",
        "- Rollback: NOT REVERSIBLE. re-add m3 by hand from a snapshot",
        "- Undo the finished steps: `kubeha rollback etcd-replace-20240501-101500-abcd`",
    ]:
        assert line in lines
    assert lines.index("- **file** (1)") < lines.index("- **etcd-member** (2)")  # kinds in a fixed order


def test_the_text_view_shows_every_change():
    text = plan_text(PLAN)
    assert "1. Add m4 to etcd as a learner  [add-m4, etcd-add-member, ~1 min 30 s]" in text
    assert "   change:   lb-backend apiservers/m3 on lb1: up -> absent" in text
    assert "   rollback: NOT REVERSIBLE. re-add m3 by hand from a snapshot" in text
    assert text.splitlines()[-1] == "    lb-backend apiservers/m3 on lb1: up -> absent"


def test_the_json_view_is_stable():
    data = json.loads(plan_json(PLAN))
    assert list(data) == ["operation", "operation_id", "arguments", "created", "inventory_digest", "steps"]
    assert data["created"] == "2024-05-01T10:15:00Z"
    assert data["steps"][1]["changes"][0] == {"kind": "etcd-member", "target": "m3", "host": None,
                                              "before": "voter", "after": None}
