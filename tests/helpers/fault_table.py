"""docs/reliability.md's "Faults during an operation" table, made from what the lab tests of
tests/lab/test_faults.py found: each case writes one JSON record under
tests/lab/results/faults/, and the table is made from every record there.

The lab module rewrites the table when it ends; `python tests/helpers/fault_table.py` does
it by hand; tests/unit/test_fault_table.py fails when the docs say anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).parents[1] / "lab" / "results" / "faults"
RELIABILITY_MD = Path(__file__).parents[2] / "docs" / "reliability.md"
START, END = "<!-- table: tests/lab/test_faults.py -->\n", "<!-- end of table -->\n"

# the faults of issue 8, in the order the table shows them: key -> what is done to the lab
FAULTS = {
    "etcd-member-killed": "an etcd member SIGKILLed",
    "network-cut": "a target host's network cut (eth0 down in its namespace)",
    "ssh-refused": "SSH refused by one host (its sshd and sessions killed)",
    "disk-full": "a full disk (a filled tmpfs) while writing a backup or a config",
    "config-rejected": "a rendered config rejected by its binary",
    "journal-deleted": "the journal file deleted",
    "two-runs": "two kubeha runs on the same cluster at once",
}


@dataclass(frozen=True)
class FaultCase:
    fault: str  # a key of FAULTS
    case: str  # where and when, in a few words
    operation: str  # the operation injected into
    outcome: str  # "completed", "stopped, then resumed", ...
    seconds: float  # from the operation's start to its end (resumes included)
    ended_safe: bool  # serving through the VIP; completed, or stopped with one line and resumed
    nothing_lost: bool  # no acknowledged etcd write lost, no config or journal record lost
    message: str  # what the stopped run said ("" when it completed)
    date: str  # YYYY-MM-DD

    @property
    def file_name(self) -> str:
        return f"{self.fault}--{re.sub(r'[^a-z0-9]+', '-', self.case.lower()).strip('-')}.json"


def write_record(case, results: Path = RESULTS) -> None:
    """``case`` (a dataclass with a ``file_name``) as a JSON record under ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    (results / case.file_name).write_text(json.dumps(asdict(case), indent=2) + "\n")


def read_json_records(kind: type, results: Path) -> list:
    """Every record under ``results``, as ``kind``."""
    return [kind(**json.loads(p.read_text())) for p in results.glob("*.json")]


def read_records(results: Path = RESULTS) -> list[FaultCase]:
    return sorted(read_json_records(FaultCase, results), key=lambda c: (list(FAULTS).index(c.fault), c.case))


def fault_table(cases: list[FaultCase]) -> str:
    """The table (one row per fault, also one not tried yet) and what each stopped run said."""
    lines = ["| fault | operation | cases tried | ended safe | nothing lost | notes |", "|---|---|---|---|---|---|"]
    for key, fault in FAULTS.items():
        mine = [c for c in cases if c.fault == key]
        if not mine:
            lines.append(f"| {fault} | - | 0 | - | - | not run yet |")
            continue
        operations = ", ".join(dict.fromkeys(c.operation for c in mine))
        notes = "; ".join(f"{c.case}: {c.outcome}, {c.seconds:.0f} s ({c.date})" for c in mine)
        lines.append(f"| {fault} | {operations} | {len(mine)} | {sum(c.ended_safe for c in mine)} "
                     f"| {sum(c.nothing_lost for c in mine)} | {notes} |")
    said = [c for c in cases if c.message]
    if said:
        lines += ["", "What each stopped run said (one line, as `kubeha` prints it after `error:`):", ""]
        lines += [f"- {FAULTS[c.fault]}, {c.case}: `` {c.message} ``" for c in said]  # messages quote `commands`
    return "\n".join(lines) + "\n"


def docs_with_table(text: str, table: str, start: str = START) -> str:
    """``text`` with the table between ``start`` and the end marker replaced by ``table``."""
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(END)
    return before + start + table + END + after


def write_docs() -> None:
    RELIABILITY_MD.write_text(docs_with_table(RELIABILITY_MD.read_text(), fault_table(read_records())))


if __name__ == "__main__":
    write_docs()
