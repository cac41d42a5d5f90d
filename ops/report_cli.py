"""``twinstream report``: a self-contained HTML report of a run (see :mod:`ops.report`).

    twinstream report --snapshot-dir twinstream-out/demo/snapshots --out report.html \\
        [--prometheus http://127.0.0.1:9090] [--start UNIX_S] [--end UNIX_S]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

HELP = "Write an HTML report of a run: streaming AUC, attention references and drift, throughput"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot-dir", type=Path, required=True, help="the trainer's snapshots")
    p.add_argument("--out", type=Path, default=Path("twinstream-report.html"))
    p.add_argument(
        "--prometheus",
        default=None,
        help="Prometheus base URL (e.g. http://127.0.0.1:9090) for live drift, throughput, latency",
    )
    p.add_argument("--start", type=float, default=None, help="unix seconds (default: 1st snapshot)")
    p.add_argument("--end", type=float, default=None, help="unix seconds (default: now)")
    p.add_argument("--title", default="twinstream run report")


def run(args: argparse.Namespace) -> int:
    from ops.report import ReportConfig, build_report

    config = ReportConfig(
        snapshot_dir=args.snapshot_dir,
        out=args.out,
        prometheus=args.prometheus,
        start=args.start,
        end=args.end,
        title=args.title,
    )
    print(f"wrote {build_report(config)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinstream report", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
