"""Plans and the engine that carries them out: the operation-independent core.

``model`` (Plan, Step, Change), ``kinds`` (StepKind, safety checks, Registry), ``journal``
(the local SQLite record), ``engine`` (apply, resume, rollback), ``render`` (text,
Markdown, JSON). Operations build plans and register step kinds; the CLI calls the engine.
"""

from kubeha.plan.engine import Progress, ProgressCallback, RunResult, apply, resume, rollback, steps_to_undo
from kubeha.plan.errors import (
    ClusterLocked, ClusterLockLost, EngineRefused, JournalError, JournalWrittenBack, OperationInterrupted, OperationLocked, PlanError,
    RollbackStopped, StepFailed, StepNotVerified, UnknownOperation,
)
from kubeha.plan.journal import Journal, ProbeRun, RunAction, RunOutcome, RunRecord, StepOutcome, StepRecord, default_journal_path
from kubeha.plan.kinds import Registry, SafetyCheck, StepContext, StepKind, StepSafetyCheck, ViewFactory, step_backup_set
from kubeha.plan.model import Change, ChangeKind, Plan, Step, inventory_digest, new_operation_id
from kubeha.plan.render import plan_json, plan_markdown, plan_text

__all__ = [
    "Change", "ChangeKind", "ClusterLockLost", "ClusterLocked", "EngineRefused", "Journal", "JournalError", "JournalWrittenBack", "OperationInterrupted", "OperationLocked",
    "Plan", "PlanError", "ProbeRun", "Progress", "ProgressCallback", "Registry", "RollbackStopped", "RunAction", "RunOutcome",
    "RunRecord", "RunResult", "SafetyCheck", "Step", "StepContext", "StepFailed", "StepKind", "StepNotVerified",
    "StepOutcome", "StepRecord", "StepSafetyCheck", "UnknownOperation", "ViewFactory", "apply", "default_journal_path", "inventory_digest",
    "new_operation_id", "plan_json", "plan_markdown", "plan_text", "resume", "rollback", "step_backup_set", "steps_to_undo",
]
