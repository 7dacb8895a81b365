"""Metrics to a JSONL file (one JSON object a line).

Each record is written with one `write` call of a whole line and flushed, so a kill can
tear at most the last line; readers and resume tolerate exactly that.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..io import atomic_write_text


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self.path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """On resume, keep the records up to the checkpoint's step (dropping a torn last line),
        so the log is the log of one run."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. A torn final line (a kill during a write) is skipped;
    a damaged line before it is an error naming the file and the line."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the line a kill tore
                break
            raise RunError(f"{path}, line {i + 1}: not a JSON record; the metrics log is damaged "
                           "(delete that line, or start a new run)") from None
    return records
