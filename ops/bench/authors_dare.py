"""The DARE authors' own code as a baseline for ``bench_models --authors-dare PATH``.

``PATH`` is a checkout of github.com/thuml/DARE (measured at c72e087); it is never copied into
this project. Its ``model/din_pytorch.py`` ``DIN`` is built with the flags of the DARE line of its
``scripts/taobao.sh`` (``-model_name DARE -long_seq_split 0:200 -attn_func scaled_dot_product
-hard_or_soft soft -top_k 20 -use_aux_loss True -use_cross_feature True -use_time_mode concat
-time_embedding_dim 16 -learning_rate 0.01 -weight_decay 0.000001``; ``-category_embedding_dim``
is the dimension under test, 16 in the script), initialised as its ``train_pytorch.train`` does
(normal, std 0.01, on every weight that is not a bias) and trained with that function's step:
forward (which builds its tensors from numpy arrays), the L2 penalty on non-embedding weights,
``Adam.zero_grad``, ``backward``, ``step``. Its batches carry the same ids as ours (time buckets
drawn uniformly from its 2,000).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from models.batch import Batch

PACKAGE = "thuml_dare_model"  # the checkout's ``model`` package, under a name of its own
WEIGHT_DECAY = 1e-6
LEARNING_RATE = 0.01
TIME_BUCKETS = 2_000


def load_din(checkout: Path) -> type:
    """The ``DIN`` class of the checkout's ``model`` package (imported from ``checkout``)."""
    folder = checkout / "model"
    if not (folder / "din_pytorch.py").is_file():
        raise FileNotFoundError(f"{folder / 'din_pytorch.py'} not found: is {checkout} thuml/DARE?")
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None
        package = ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        package.__spec__ = spec
        sys.modules[PACKAGE] = package
    module = importlib.import_module(f"{PACKAGE}.din_pytorch")
    din: type = module.DIN
    return din


def build(checkout: Path, dim: int, n_items: int, n_categories: int, seq_len: int) -> Any:
    """Their DIN with the DARE flags of ``scripts/taobao.sh`` at ``dim``, initialised as theirs."""
    din = load_din(checkout)
    model = din(
        category_embedding_dim=dim,
        item_embedding_dim=-1,
        time_embedding_dim=16,
        item_n=n_items,
        cate_n=n_categories,
        batch_size=2048,
        max_length=seq_len,
        use_cross_feature=True,
        attn_func="scaled_dot_product",
        use_aux_loss=True,
        use_time=True,
        use_time_mode="concat",
        short_seq_split=None,
        long_seq_split=f"0:{seq_len}",
        soft_search=True,
        top_k=20,
        use_long_seq_average=False,
        model_name="DARE",
        mlp_position_after_concat=True,
        only_odot=False,
        mlp_hidden_layer=[32],
        observe_attn_repr_grad=False,
    )
    for name, param in model.named_parameters():
        if "bias" not in name:
            torch.nn.init.normal_(param, mean=0.0, std=0.01)
    return model


def their_batch(batch: Batch, seed: int) -> dict[str, np.ndarray]:
    """Our batch in their dict of numpy arrays (``target``: one-hot label)."""
    rng = np.random.default_rng(seed)
    n, length = batch.hist_item.shape
    label = (batch.label if batch.label is not None else torch.zeros(n)).long().numpy()
    return {
        "iid": batch.target_item.numpy().astype(np.int64),
        "cid": batch.target_category.numpy().astype(np.int64),
        "tid": rng.integers(0, TIME_BUCKETS, n),
        "hist_iid": batch.hist_item.numpy().astype(np.int64),
        "hist_cid": batch.hist_category.numpy().astype(np.int64),
        "hist_tid": rng.integers(0, TIME_BUCKETS, (n, length)),
        "mask": batch.hist_mask.numpy().astype(np.int64),
        "target": np.eye(2, dtype=np.int64)[label],
    }


def train_rate(model: Any, data: dict[str, np.ndarray], steps: int, warmup: int) -> float:
    """Samples/s of their training step (``train_pytorch.train``'s loop body)."""
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()

    def step() -> None:
        _, loss, _ = model.forward(data)
        penalty = sum(
            torch.sum(torch.pow(p, 2))
            for name, p in model.named_parameters()
            if "bias" not in name and "embedding" not in name
        )
        loss = loss + WEIGHT_DECAY * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * data["iid"].shape[0] / (time.perf_counter() - start)


def score_latency_ms(model: Any, data: dict[str, np.ndarray], reps: int) -> tuple[float, float]:
    """p50 / p99 of one forward over the candidates (their forward also computes its loss)."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(reps + 10):
            start = time.perf_counter()
            model.forward(data, mode="test")
            if i >= 10:
                times.append((time.perf_counter() - start) * 1e3)
    q = np.percentile(times, [50, 99])
    return float(q[0]), float(q[1])
