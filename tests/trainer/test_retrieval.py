"""NDCG@k of a search stage, and planted ground truth mapped onto history windows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streaming.sources import load_log
from streaming.synthetic import GeneratorConfig, generate
from trainer.dataset import DatasetConfig, build_dataset
from trainer.retrieval import load_truth, ndcg_at_k, truth_index, window_relevance


def brute_ndcg(ranked: list[int], rel: list[float], k: int) -> float:
    dcg = sum(rel[p] / math.log2(i + 2) for i, p in enumerate(ranked[:k]) if 0 <= p < len(rel))
    ideal = sorted(rel, reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else math.nan


def test_ndcg_matches_brute_force_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    rel = rng.random((50, 30)) * (rng.random((50, 30)) < 0.3)
    ranked = np.stack([rng.permutation(30)[:8] for _ in range(50)])
    ranked[:5, -1] = -1  # padding slots
    got = ndcg_at_k(ranked, rel)
    want = [brute_ndcg(ranked[i].tolist(), rel[i].tolist(), 8) for i in range(50)]
    np.testing.assert_allclose(got, want, equal_nan=True)


def test_ndcg_is_one_for_the_ideal_ranking_and_ignores_repeats() -> None:
    rel = np.array([[0.5, 0.0, 0.2, 0.3]])
    assert ndcg_at_k(np.array([[0, 3, 2]]), rel)[0] == pytest.approx(1.0)
    assert ndcg_at_k(np.array([[0, 0, 0]]), rel)[0] < ndcg_at_k(np.array([[0, 3, 1]]), rel)[0]
    assert ndcg_at_k(np.array([[0, 3, 2]]), rel, k=1)[0] == pytest.approx(1.0)


def test_planted_truth_maps_to_same_category_slots(tmp_path: Path) -> None:
    synth = generate(GeneratorConfig(users=20, categories=12, long_users=0, seed=3))
    truth_path = synth.write(tmp_path / "log.csv")
    truth = load_truth(truth_path)
    again = truth_index(synth.truth)
    assert truth and truth.keys() == again.keys()
    assert all(np.array_equal(truth[k], again[k]) for k in truth)
    every_type = ("click", "cart", "fav", "buy")
    ds = build_dataset(
        load_log(tmp_path / "log.csv", "taobao"),
        DatasetConfig(seq_len=30, behaviour_types=every_type, min_events=3),
    )
    positives = ds.train.take(np.flatnonzero(ds.train.label == 1))
    rel, has = window_relevance(ds, positives, truth)
    assert has.sum() > 20
    batch = ds.make_batch(positives)
    hist_cat = batch.hist_category.numpy()
    # a planted revisit points at earlier behaviours of the target's category, inside the window
    same = hist_cat == positives.category[:, None]
    assert np.all(same[rel > 0])
    assert np.all(batch.hist_mask.numpy()[rel > 0])
