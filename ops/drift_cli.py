"""``twinstream drift-ack``: acknowledge an attention drift and learn a new baseline.

The attention drift of the scorers is measured against a pinned baseline
(:mod:`serving.drift_baseline`; README "Attention drift"). Once a shift is understood (a real
change of interests, a new model that attends differently), acknowledging it writes a new epoch
into the baseline file that every worker process reads: each learns a new baseline from its live
traffic over ``TWINSTREAM_DRIFT_BASELINE_S`` and pins it; the drift gauges are absent meanwhile.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from contracts.settings import Settings
from serving.drift import DriftConfig
from serving.drift_baseline import BaselineFile, acknowledge

HELP = "Acknowledge the attention drift: every worker learns a new drift baseline from now on"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--baseline",
        help="the baseline file (default: TWINSTREAM_DRIFT_BASELINE_PATH, else "
        "TWINSTREAM_STATE_DIR/drift-baseline.json)",
    )
    p.add_argument("--show", action="store_true", help="only say what the file holds")


def baseline_path(explicit: str | None, settings: Settings) -> Path:
    if explicit:
        return Path(explicit)
    path = DriftConfig.from_settings(settings).baseline_path
    assert path is not None  # from_settings always names one
    return path


def _ago(path: Path) -> str:
    return f"{time.time() - path.stat().st_mtime:,.0f} s ago"


def run(args: argparse.Namespace) -> int:
    path = baseline_path(args.baseline, Settings.from_env())
    if args.show:
        state = BaselineFile(path).read() if path.exists() else None
        if state is None:
            print(f"{path}: no baseline yet (the workers are learning one)")
        else:
            print(
                f"{path}: epoch {state.epoch}, acknowledged {_ago(path)}; baselines of that "
                "epoch are learnt from the traffic since"
            )
        return 0
    epoch = acknowledge(path)
    print(f"{path}: drift acknowledged (epoch {epoch}); the workers learn a new baseline")
    return 0
