"""Offline TWIN-V2 clusters are the worker's: same log, same embeddings, same cluster sequences."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from contracts.schema import Event, EventType
from feature_store import FeatureConfig, MemoryStore, PartitionWorker
from feature_store.cluster_config import ClusterConfig
from feature_store.ids import stable_id
from streaming.sources import EventLog
from trainer.dataset import DatasetConfig, build_dataset
from trainer.offline_clusters import ItemTable

DIM = 8


def vector(raw_item: str) -> npt.NDArray[np.float32]:
    """A fixed embedding per raw item id (the same on both paths)."""
    rng = np.random.default_rng(zlib.crc32(raw_item.encode()))
    return rng.standard_normal(DIM).astype(np.float32)


class RawKeyEmbedder:
    """The worker's side: item and category keys are ``stable_id`` of the raw ids."""

    version = 1

    def __init__(self, raw_items: list[str], raw_categories: list[str]) -> None:
        self.by_key = {stable_id(raw): vector(raw) for raw in raw_items}
        self.by_category = {stable_id(raw): vector("category " + raw) for raw in raw_categories}

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return np.stack([self.by_key[int(k)] for k in items])

    def tokens(
        self, items: npt.NDArray[np.int64], categories: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        category_rows = np.stack([self.by_category[int(k)] for k in categories])
        return np.concatenate([self(items), category_rows], axis=1)


def click_log(n_users: int = 3, per_user: int = 330, n_items: int = 90) -> EventLog:
    """Interleaved users whose clicks come from a few item groups (so k-means has structure)."""
    rng = np.random.default_rng(7)
    n = n_users * per_user
    user = np.tile(np.arange(n_users), per_user)
    item = rng.integers(0, n_items, n)
    as_str = np.vectorize(str, otypes=[object])
    return EventLog(
        user_id=as_str(user + 500),
        item_id=as_str(item * 3 + 11),
        category_id=as_str(item % 4),
        type=np.full(n, "click", dtype=object),
        ts=1.6e9 + 60.0 * np.arange(n, dtype=np.float64),
    )


def worker_sequences(
    log: EventLog,
    embedder: RawKeyEmbedder,
    raw_recent: int = 0,
    by_token: bool = False,
    raw_until: int = 0,
) -> dict[tuple[str, int], list]:
    """(user, behaviours before) -> the worker's cluster sequence as (item key, category key,
    size), read from its store before each event is applied."""
    clusters = ClusterConfig(raw_recent=raw_recent, by_token=by_token, raw_until=raw_until)
    config = FeatureConfig(clusters=clusters)
    worker = PartitionWorker(MemoryStore(), 0, config, embedder=embedder)
    seen: dict[tuple[str, int], list] = {}
    for offset in range(len(log.ts)):
        user = str(log.user_id[offset])
        (state,) = worker.store.get_many([user])
        if state is not None:
            c = state.clusters()
            seen[(user, state.total)] = list(zip(c["item"], c["category"], c["size"], strict=True))
        event = Event(
            user, str(log.item_id[offset]), EventType.CLICK, float(log.ts[offset]),
            str(log.category_id[offset]), event_id=f"e{offset}",
        )  # fmt: skip
        worker.commit(worker.process([(offset, event)]))
    return seen


@pytest.mark.parametrize(
    ("raw_recent", "by_token", "raw_until"),
    [(0, False, 0), (100, False, 0), (0, True, 0), (0, False, 200)],
)
def test_offline_clusters_equal_the_workers_for_the_same_log_and_embeddings(
    raw_recent: int, by_token: bool, raw_until: int
) -> None:
    log = click_log()
    raw_items = sorted(set(log.item_id.tolist()))
    raw_cats = sorted(set(log.category_id.tolist()))
    embedder = RawKeyEmbedder(raw_items, raw_cats)
    online = worker_sequences(log, embedder, raw_recent, by_token, raw_until)
    if raw_until:  # a history that fits stays raw, one that outgrew it is clustered
        sizes = {before: max(size for *_, size in seq) for (_, before), seq in online.items()}
        assert max(sizes[b] for b in sizes if b <= raw_until) == 1
        assert min(sizes[b] for b in sizes if b >= raw_until + 128) > 1

    dcfg = DatasetConfig(
        negatives=0,
        max_clusters=10_000,
        cluster_raw_recent=raw_recent,
        cluster_raw_until=raw_until,
    )
    ds = build_dataset(log, dcfg)
    table = np.zeros((ds.n_items, DIM), np.float32)  # rows 1.. are the sorted raw ids
    table[1:] = np.stack([vector(raw) for raw in raw_items])
    categories = np.zeros((ds.n_categories, DIM), np.float32)
    categories[1:] = np.stack([vector("category " + raw) for raw in raw_cats])
    ds.clusters.use(ItemTable(table, 1, categories), by_token=by_token)
    item_key = np.array([0] + [stable_id(r) for r in raw_items])
    cat_key = np.array([0] + [stable_id(r) for r in raw_cats])

    compared, multi = 0, 0
    for split in ("train", "valid", "test"):
        samples = ds.split(split)
        batch = ds.make_batch(samples)
        start = ds.behaviours.user_start
        for row in range(len(samples)):
            u = int(samples.user[row])
            before = int(samples.position[row] - start[u])
            mask = batch.cluster_mask[row].numpy()
            offline = list(
                zip(
                    item_key[batch.cluster_item[row].numpy()[mask]],
                    cat_key[batch.cluster_category[row].numpy()[mask]],
                    batch.cluster_size[row].numpy()[mask].astype(np.int64),
                    strict=True,
                )
            )
            assert offline == online[(str(ds.users[u]), before)], (split, u, before)
            compared += 1
            multi += int(batch.cluster_size[row].max() > 1)
    assert compared == 3 * (330 - 1)  # every target
    assert multi > (600 if raw_recent == raw_until == 0 else 300)  # most see k-means leaves
    if by_token:  # the category rows moved the leaves: this compared token clusters
        by_item = worker_sequences(log, RawKeyEmbedder(raw_items, raw_cats), raw_recent)
        assert sum(by_item[key] != seq for key, seq in online.items()) > 300


def test_clusters_follow_the_models_table_after_the_warmup() -> None:
    from models.registry import build_model
    from trainer.loop import Learner, LearnerConfig
    from trainer.offline import EvalConfig, model_config, refresh_cluster_embeddings

    ds = build_dataset(click_log(per_user=200), DatasetConfig(negatives=1))
    cfg = EvalConfig(dim=8, cluster_warmup_epochs=1, cluster_by_token=False)
    learner = Learner(build_model("twin_v2", model_config(ds, cfg)), LearnerConfig())
    ds.clusters.use(None)
    refresh_cluster_embeddings(learner, ds, 0, cfg)
    assert ds.clusters.version == 0  # warm-up: by category, as a worker before any snapshot
    refresh_cluster_embeddings(learner, ds, 1, cfg)
    assert ds.clusters.version == 2
    assert ds.clusters.embedder is not None
    table = learner.model.item.weight.detach().numpy()
    items = np.arange(1, ds.n_items)
    assert np.array_equal(ds.clusters.embedder(items), table[items])
    assert not ds.clusters.config.by_token
    tokens = replace(cfg, cluster_by_token=True)  # [item row, the behaviour's category row]
    refresh_cluster_embeddings(learner, ds, 1, tokens)
    assert ds.clusters.config.by_token
    cats = ds.item_category[items]
    categories = learner.model.category.weight.detach().numpy()[cats]
    assert isinstance(ds.clusters.embedder, ItemTable)
    rows = ds.clusters.embedder.tokens(items, cats)
    assert np.array_equal(rows, np.hstack([table[items], categories]))


def test_retrieval_against_the_truth_over_the_whole_history(tmp_path: Path) -> None:
    """TWIN's top-k behaviours and TWIN-V2's top-k clusters are scored on one scale: a unit
    gains its share of relevant members (trainer.retrieval.history_ndcg)."""
    from streaming.sources import load_log
    from streaming.synthetic import GeneratorConfig, generate
    from trainer.offline import EvalConfig, train_one
    from trainer.retrieval import load_truth

    synth = generate(GeneratorConfig(users=0, long_users=4, long_history=400, seed=5))
    truth = load_truth(synth.write(tmp_path / "log.csv"))
    every_type = ("click", "cart", "fav", "buy")
    ds = build_dataset(
        load_log(tmp_path / "log.csv", "taobao"),
        DatasetConfig(seq_len=40, behaviour_types=every_type, train_stride=10, max_clusters=500),
    )
    cfg = EvalConfig(epochs=2, max_batches=1, dim=8, topk=5, batch_size=64, progress=False)
    for name, length in (("twin", 40.0), ("twin_v2", None)):
        result = train_one(name, 0, ds, cfg, truth)
        assert result.ndcg_history is not None and 0.0 <= result.ndcg_history <= 1.0, name
        assert result.attended_length is not None
        if length is not None:
            assert result.attended_length == length  # every window full
        else:  # clusters: fewer than the behaviours they stand for, more than 400 / gamma
            assert 400 / 20 < result.attended_length < 400


def test_an_epochs_clusters_keep_the_table_of_its_start_while_the_model_trains() -> None:
    from models.registry import build_model
    from trainer.loop import Learner, LearnerConfig
    from trainer.offline import EvalConfig, model_config, refresh_cluster_embeddings

    ds = build_dataset(click_log(per_user=200), DatasetConfig(negatives=1))
    cfg = EvalConfig(dim=8, cluster_warmup_epochs=0, batch_size=64)
    learner = Learner(build_model("twin_v2", model_config(ds, cfg)), LearnerConfig())
    refresh_cluster_embeddings(learner, ds, 0, cfg)
    table = ds.clusters.embedder
    assert isinstance(table, ItemTable) and table.categories is not None
    start = table.table.copy(), table.categories.copy()
    for batch in ds.batches("train", 64):  # the optimiser updates the live tables in place
        learner.learn_many(batch)
    trained = learner.model.item.weight.detach().numpy()
    assert not np.array_equal(trained, start[0])
    assert np.array_equal(table.table, start[0]) and np.array_equal(table.categories, start[1])


def test_retrieval_at_planted_returns_is_the_history_ndcg_of_those_samples(tmp_path: Path) -> None:
    """Profile.ndcg_returns against the whole truth equals the history NDCG against a truth that
    holds the return records alone (the generator's ``"kind": "return"``)."""
    from models.registry import build_model
    from streaming.sources import load_log
    from streaming.synthetic import GeneratorConfig, generate
    from trainer.loop import Learner, LearnerConfig
    from trainer.offline import EvalConfig, Profile, evaluate_split, model_config
    from trainer.retrieval import load_truth, truth_index

    gen = GeneratorConfig(users=0, long_users=6, long_history=600, return_prob=0.5, seed=5)
    synth = generate(replace(gen, dormant_after=100))
    truth = load_truth(synth.write(tmp_path / "log.csv"))
    returns = truth_index(r for r in synth.truth if r.get("kind") == "return")
    assert returns and truth.returns == returns.keys() == returns.returns
    every_type = ("click", "cart", "fav", "buy")
    ds = build_dataset(
        load_log(tmp_path / "log.csv", "taobao"),
        DatasetConfig(seq_len=40, behaviour_types=every_type, train_stride=3, max_clusters=500),
    )
    learner = Learner(build_model("twin_v2", model_config(ds, EvalConfig(dim=8))), LearnerConfig())
    whole, alone = Profile(), Profile()
    evaluate_split(learner, ds, "train", 256, whole, None, truth)
    evaluate_split(learner, ds, "train", 256, alone, None, returns)
    assert 0 < len(whole.ndcg_returns) < len(whole.ndcg_history)
    planted = np.asarray(alone.ndcg_history)
    assert whole.ndcg_returns == planted[~np.isnan(planted)].tolist()  # nan: no planted truth
