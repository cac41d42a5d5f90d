"""A quick ``twinstream train`` for integration tests, and its audit log read back.

``MODEL_ARGS`` and ``CAPACITY_ARGS`` make a small DARE model (dimension 8, 20 behaviours, top 5)
with small id tables; ``QUICK_TRAINER_ARGS`` adds batches of 32, a snapshot every 40 steps, a
short wait for a batch and the CPU. A trainer started with ``--audit-log PATH`` writes one JSON
line per step with the sample offsets it trained, by partition; ``trained(PATH)`` gathers them.

>>> import json, tempfile
>>> path = Path(tempfile.mkdtemp()) / "trainer.audit"
>>> steps = [{"step": 1, "offsets": {"0": [0, 1]}}, {"step": 2, "offsets": {"0": [2], "1": [0]}}]
>>> _ = path.write_text("".join(json.dumps(s) + "\\n" for s in steps) + '{"step": 3, "off')
>>> [line["step"] for line in audit_lines(path)]  # the line cut by kill -9 is dropped
[1, 2]
>>> trained(path)
{0: [0, 1, 2], 1: [0]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_ARGS = ("--model", "dare", "--dim", "8", "--seq-len", "20", "--topk", "5")
CAPACITY_ARGS = ("--item-capacity", "8192", "--category-capacity", "256")
QUICK_TRAINER_ARGS = (
    *MODEL_ARGS,
    *CAPACITY_ARGS,
    *("--batch-size", "32", "--snapshot-every-steps", "40", "--snapshot-every-s", "600"),
    *("--max-wait-s", "0.2", "--device", "cpu"),
)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The audit lines (a line cut by kill -9 is dropped); none before the file exists."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return lines


def offsets_of(lines: list[dict[str, Any]]) -> dict[int, list[int]]:
    """The sample offsets the audit ``lines`` trained, per partition, step by step."""
    out: dict[int, list[int]] = {}
    for line in lines:
        for p, offsets in line["offsets"].items():
            out.setdefault(int(p), []).extend(offsets)
    return out


def trained(path: Path) -> dict[int, list[int]]:
    """The sample offsets the trainer with the audit log ``path`` trained, per partition."""
    return offsets_of(audit_lines(path))
