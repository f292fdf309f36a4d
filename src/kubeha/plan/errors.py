"""What the engine says when it stops.

Every error here is one line, except ``EngineRefused``: it names the refused step on its
first line, then one line per reason, then the next command, so an operator sees every
reason at once instead of fixing them one run at a time.
"""

from __future__ import annotations

from kubeha.errors import InputError, KubehaError


def resume_command(operation_id: str) -> str:
    return f"kubeha resume {operation_id}"


def rollback_command(operation_id: str) -> str:
    return f"kubeha rollback {operation_id}"


class PlanError(InputError):
    """A plan that cannot be run: unknown step kinds or checks, secrets, a different plan under the same id."""


class JournalError(KubehaError):
    """The journal could not be opened, read or written, or does not know the operation."""


class UnknownOperation(JournalError):
    """The journal holds no record of the operation (deleted, or another journal)."""


class JournalWrittenBack(JournalError):
    """The journal file was deleted or replaced during a run: kubeha wrote the copy it had open
    back to disk and stopped before the next step."""

    def __init__(self, operation_id: str, step_id: str, journal: str, written_to: str) -> None:
        self.operation_id = operation_id
        self.written_to = written_to
        if written_to == journal:
            said = (f"the journal {journal} was deleted during the run: kubeha wrote it back from the copy it "
                    f"had open and stopped before step {step_id}; find what removes files there, then continue "
                    f"with {resume_command(operation_id)}")
        else:
            said = (f"the journal {journal} was replaced during the run: kubeha kept its own record in "
                    f"{written_to} and stopped before step {step_id}; continue with "
                    f"{resume_command(operation_id)} --journal {written_to}")
        super().__init__(said)


class OperationLocked(KubehaError):
    """Another kubeha process on this machine is running the same operation."""


class StepNotVerified(KubehaError):
    """Raised by a step kind's ``verify`` when the step's effect is not there: the reason, one line."""


class EngineRefused(KubehaError):
    """A step's safety checks found reasons not to go on; nothing of that step was done.

    The message has several lines: the step, one line per reason, the next command.
    """

    def __init__(self, operation_id: str, step_id: str, reasons: list[str]) -> None:
        self.operation_id = operation_id
        self.step_id = step_id
        self.reasons = reasons
        self.next_command = resume_command(operation_id)
        lines = [f"step {step_id} refused ({len(reasons)} reason{'s' if len(reasons) != 1 else ''}):",
                 *(f"  - {reason}" for reason in reasons),
                 f"fix these, then run: {self.next_command}"]
        super().__init__("\n".join(lines))


class StepFailed(KubehaError):
    """A step's action or verification failed; the step was rolled back where it could be."""

    def __init__(self, operation_id: str, step_id: str, cause: str, *, rolled_back: bool) -> None:
        self.operation_id = operation_id
        self.step_id = step_id
        self.cause = cause
        self.rolled_back = rolled_back
        self.next_command = resume_command(operation_id)
        state = "rolled back" if rolled_back else "NOT rolled back"
        super().__init__(f"step {step_id} failed ({state}): {cause}; after fixing it run "
                         f"{self.next_command}, or undo the finished steps with {rollback_command(operation_id)}")


class OperationInterrupted(KubehaError):
    """The operator stopped the run (Ctrl-C); what was done is journaled."""

    def __init__(self, operation_id: str, where: str) -> None:
        self.operation_id = operation_id
        self.next_command = resume_command(operation_id)
        super().__init__(f"interrupted {where}; continue with {self.next_command}")


class RollbackStopped(KubehaError):
    """Rollback could not undo a step: it cannot be undone, or undoing it failed."""

    def __init__(self, operation_id: str, step_id: str, reason: str) -> None:
        self.operation_id = operation_id
        self.step_id = step_id
        self.reason = reason
        super().__init__(f"rollback stopped at step {step_id}: {reason}")


class ClusterLocked(OperationLocked):
    """Another kubeha run, on any machine, holds the cluster."""


class ClusterLockLost(KubehaError):
    """The cluster lock could not be kept: another run may take the cluster."""
