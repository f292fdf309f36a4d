"""Tables in the docs that tests make: a test measures, then the doc must hold what it measured.

``KUBEHA_WRITE_DOCS=1`` writes the table between its markers instead of comparing.
"""

from __future__ import annotations

import os
from pathlib import Path

TABLE_END = "<!-- end of table -->\n"


def assert_doc_table(doc: Path, test_file: str, table: str) -> None:
    """``doc`` holds ``table`` between ``<!-- table: test_file -->`` and the end marker after it."""
    start = f"<!-- table: {test_file} -->\n"
    text = doc.read_text()
    if os.environ.get("KUBEHA_WRITE_DOCS") == "1":
        before, found, rest = text.partition(start)
        assert found, f"{doc} has no {start.strip()} marker: put one (and {TABLE_END.strip()}) where the table goes"
        _, _, after = rest.partition(TABLE_END)
        doc.write_text(before + start + table + TABLE_END + after)
        text = doc.read_text()
    assert start + table + TABLE_END in text, \
        f"{doc.name} is out of date: KUBEHA_WRITE_DOCS=1 pytest {test_file} writes it"
