"""The synthetic generator: sessions over 30-minute gaps, long histories, planted truth, shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate, iter_truth


def test_sessions_long_users_and_truth_are_consistent(tmp_path: Path) -> None:
    cfg = GeneratorConfig(users=20, long_users=1, long_history=3_000, seed=3)
    log = generate(cfg)
    counts = {int(u): int(n) for u, n in zip(*np.unique(log.user, return_counts=True), strict=True)}
    assert counts[1] == 3_000 and len(counts) == 21
    for record in log.truth[:500]:
        mine = log.category[log.user == record["user_id"]]
        pos = int(record["position"])  # type: ignore[call-overload]
        assert pos > int(record["source"])  # type: ignore[call-overload]
        assert mine[int(record["source"])] == mine[pos]  # type: ignore[call-overload]
        assert all(mine[int(j)] == mine[pos] and j < pos for j in record["relevant"])  # type: ignore[attr-defined]
    truth_path = log.write(tmp_path / "UserBehavior.csv")
    _, report = read_events(tmp_path / "UserBehavior.csv", "taobao")
    assert report.valid == len(log.ts) and not report.bad
    assert sum(1 for _ in iter_truth(truth_path)) == len(log.truth)


def test_gaps_inside_sessions_are_short_and_between_sessions_long() -> None:
    log = generate(GeneratorConfig(users=30, long_users=0, seed=5))
    for user in np.unique(log.user):
        gaps = np.diff(np.sort(log.ts[log.user == user]))
        assert ((gaps <= 600) | (gaps > 30 * 60)).all()


def test_same_seed_same_log_and_shift_changes_categories() -> None:
    a = generate(GeneratorConfig(users=10, long_users=0, seed=9))
    b = generate(GeneratorConfig(users=10, long_users=0, seed=9))
    assert np.array_equal(a.item, b.item) and np.array_equal(a.ts, b.ts)
    cfg = GeneratorConfig(users=40, long_users=0, shift_at=0.5, revisit_prob=0.0, seed=1)
    shifted = generate(cfg)
    middle = cfg.start_ts + 0.5 * cfg.window_days * 86_400
    before = set(shifted.category[shifted.ts < middle - 86_400].tolist())
    after = set(shifted.category[shifted.ts > middle + 86_400].tolist())
    assert before and after and not before & after


def test_returns_come_back_to_interests_dormant_for_dormant_after_behaviours() -> None:
    cfg = GeneratorConfig(
        users=0, long_users=3, long_history=4_000, return_prob=0.05, dormant_after=500, seed=2
    )
    log = generate(cfg)
    returns = [r for r in log.truth if r.get("kind") == "return"]
    assert len(returns) > 40  # 88 at this seed: a draw returns only where a category is dormant
    for record in returns:
        mine = log.category[log.user == record["user_id"]]
        pos, source = int(record["position"]), int(record["source"])  # type: ignore[call-overload]
        assert mine[source] == mine[pos]
        assert not (mine[pos - cfg.dormant_after : pos] == mine[pos]).any()  # dormant until now
        relevant = np.asarray(record["relevant"])
        assert relevant.size and (relevant < pos - cfg.dormant_after).all()
        assert (mine[relevant] == mine[pos]).all()
    plain = generate(GeneratorConfig(users=0, long_users=3, long_history=4_000, seed=2))
    assert not any("kind" in r for r in plain.truth)
