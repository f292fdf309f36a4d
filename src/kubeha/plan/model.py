"""A plan: what an operation will do, step by step, decided before anything is touched.

Pure data. A plan is built by an operation from the inventory and a look at the cluster,
shown to the operator (text, Markdown, JSON), stored in the journal as JSON, and carried
out by the engine, which finds each step's implementation by its ``kind``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from kubeha.plan.errors import PlanError
from kubeha.plan.secrets import secret_kind

# The operation id names the backup directory on hosts (BackupSet) and the lock file here.
OPERATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
STEP_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChangeKind(str, Enum):
    FILE = "file"
    CERT = "cert"
    ETCD_MEMBER = "etcd-member"
    LB_BACKEND = "lb-backend"
    SERVICE = "service"
    VIP = "vip"
    KUBE_OBJECT = "kube-object"


class Change(_Frozen):
    """One thing a step changes, as the operator should see it: ``before`` → ``after``.

    ``before``/``after`` are short descriptions (a digest, a state, an address), never
    contents: None means "absent" (created, or removed).
    """

    kind: ChangeKind
    target: str  # a path, a member name, "haproxy backend apiservers/m3", a unit name
    host: str | None = None  # None: a cluster-wide thing (an etcd member, a kube object)
    before: str | None = None
    after: str | None = None


class Step(_Frozen):
    id: str = Field(pattern=STEP_ID_PATTERN)
    kind: str  # the registered StepKind that carries it out
    title: str
    hosts: tuple[str, ...] = ()
    changes: tuple[Change, ...] = ()
    safety_checks: tuple[str, ...] = ()  # registered check names, judged on a fresh view before the step
    verification: str = ""  # how the engine will know the step worked, for people
    rollback: str = ""  # how the step is undone, for people
    estimated_seconds: int = Field(default=0, ge=0)
    reversible: bool = True
    arguments: dict[str, JsonValue] = {}  # the kind's own inputs (a member name, a peer URL)


class Plan(_Frozen):
    operation: str
    operation_id: str = Field(pattern=OPERATION_ID_PATTERN)
    arguments: dict[str, str] = {}
    created: datetime
    inventory_digest: str
    steps: tuple[Step, ...]

    @field_validator("created")
    @classmethod
    def _aware(cls, created: datetime) -> datetime:
        if created.tzinfo is None:
            raise ValueError("created must carry a time zone")
        return created

    @model_validator(mode="after")
    def _sound(self) -> Plan:
        ids = [step.id for step in self.steps]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"step ids repeat: {', '.join(repeated)}")
        return self

    @model_validator(mode="after")
    def _no_secrets(self) -> Plan:
        # The JSON form is what gets stored and shown, so it is what must hold no secret.
        kind = secret_kind(self.model_dump_json())
        if kind:
            raise ValueError(f"the plan holds what looks like {kind}; plans must never carry secrets")
        return self

    @property
    def estimated_seconds(self) -> int:
        return sum(step.estimated_seconds for step in self.steps)

    def step(self, step_id: str) -> Step:
        return next(step for step in self.steps if step.id == step_id)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise PlanError(f"{source} is not a valid plan: {_first_problem(e)}") from e

    @classmethod
    def build(cls, **fields: object) -> Plan:
        """A plan from its fields, with a bad plan said as one PlanError line."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise PlanError(f"invalid plan: {_first_problem(e)}") from e


def _first_problem(e: ValidationError) -> str:
    error = e.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def new_operation_id(operation: str, now: datetime | None = None) -> str:
    """A readable, unique id: ``etcd-replace-20240501-101500-3fa2``."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", operation).strip("-.") or "op"
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def inventory_digest(inventory_json: str) -> str:
    """What ties a plan to the inventory it was made from: the engine refuses a plan whose
    inventory has changed since."""
    return "sha256:" + hashlib.sha256(inventory_json.encode()).hexdigest()
