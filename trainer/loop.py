"""The one training step the offline evaluation and the online trainer share.

:class:`Learner` owns a model and its optimizers:

- **sparse embedding tables** (``model.sparse_parameters()``, gradients from
  ``nn.Embedding(sparse=True)``) are updated by *lazy* Adam, i.e. :class:`torch.optim.SparseAdam`'s
  update (by default computed by :class:`trainer.optim.LazyAdam`, the same update in fewer passes):
  only the rows a batch touches get their moments and weights updated. A step then costs time in
  proportion to the batch, not to the table (4M Taobao items x 64 dims: dense Adam rewrites 1 GiB of
  weights and 2 GiB of moments every step). It is not numerically identical to dense Adam: rows
  that a batch misses keep stale moments instead of decaying them, and they get no update at all
  (dense Adam keeps moving every row that ever had a gradient). For CTR embeddings, where most rows
  are cold most of the time, this is the standard trade (TensorFlow's LazyAdam, TorchRec's fused
  row-wise optimizers) and what makes per-event online learning affordable.
- **dense parameters** use Adam (fused kernels on CUDA) with L2 ``l2`` on weight matrices (not on
  biases or norm parameters), ``lr`` = 0.01 as in the public DARE code.
- **sequence encoders** (``model.encoder_parameters()``: BST's Transformer block, DSIN's session
  self-attention and Bi-LSTM, DIEN's GRU and AUGRU) get a separate Adam at ``encoder_lr`` = 0.001,
  the rate Transformer recommenders such as SASRec train at. At 0.01 from the first step BST's
  and DSIN's encoders lost to plain mean pooling on MovieLens (``trainer/RESULTS-offline.md``);
  the embeddings and the head keep 0.01. One rule for every model that has such an encoder.

Loss: binary cross-entropy on the logits plus the model's auxiliary loss (DIEN), if any; the model
weights that one itself (``ModelConfig.aux_loss_weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.base import CTRModel, ModelOutput
from models.batch import Batch
from trainer.optim import LazyAdam


@dataclass(frozen=True)
class LearnerConfig:
    lr: float = 0.01
    l2: float = 1e-6  # L2 on dense weight matrices
    device: str | None = None  # None: CUDA when available, else CPU
    sparse_optimizer: Literal["lazy_adam", "sparse_adam"] = "lazy_adam"  # same update
    encoder_lr: float = 0.001  # the model's sequence encoder (model.encoder_parameters())


def resolve_device(name: str | None) -> torch.device:
    """The requested device, or CUDA when available and nothing was requested."""
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _optimizers(
    model: CTRModel, cfg: LearnerConfig, device: torch.device
) -> list[torch.optim.Optimizer]:
    """[sparse tables (lazy Adam)], [dense (Adam)], [sequence encoder (Adam)]: an optimizer per
    kind the model has, in that order (a snapshot's optimizer state lists them so)."""
    sparse = list(model.sparse_parameters())
    encoder = model.encoder_parameters()
    encoder_ids = {id(p) for p in encoder}
    dense = [p for p in model.dense_parameters() if id(p) not in encoder_ids]
    out: list[torch.optim.Optimizer] = []
    if sparse:
        lazy = LazyAdam if cfg.sparse_optimizer == "lazy_adam" else torch.optim.SparseAdam
        out.append(lazy(sparse, lr=cfg.lr))
    for params, lr in ((dense, cfg.lr), (encoder, cfg.encoder_lr)):
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.l2},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        if groups:
            out.append(torch.optim.Adam(groups, lr=lr, fused=device.type == "cuda"))
    return out


class Learner:
    """A model with its optimizers: ``learn_many``, ``predict_proba_many``, ``score_then_learn``.

    >>> import models
    >>> from models.testing import random_batch
    >>> cfg = models.ModelConfig(n_items=50, n_categories=5, dim=8, seq_len=10, topk=4)
    >>> learner = Learner(models.build_model("dare", cfg), LearnerConfig(device="cpu"))
    >>> batch = random_batch(cfg, batch_size=16, seq_len=10, n_clusters=3, seed=0)
    >>> probs = learner.score_then_learn(batch)
    >>> probs.shape, learner.steps
    ((16,), 1)
    """

    def __init__(self, model: CTRModel, config: LearnerConfig | None = None) -> None:
        self.config = config or LearnerConfig()
        self.device = resolve_device(self.config.device)
        self.model = model.to(self.device)
        self.optimizers = _optimizers(self.model, self.config, self.device)
        self.steps = 0
        # called with (sparse table, rows) before each step changes them (trainer.deltas)
        self.on_rows: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    def loss(self, batch: Batch) -> torch.Tensor:
        """Training loss of a batch already on the device: BCE + the model's (weighted) aux loss."""
        if batch.label is None:
            raise ValueError("a training batch needs labels")
        out = self.model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.label.float())
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        return loss

    def learn_many(self, batch: Batch) -> float:
        """One optimizer step on a labelled batch; returns the loss before the step."""
        self.model.train()
        loss = self.loss(batch.to(self.device, non_blocking=True))
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self.step_optimizers()
        self.steps += 1
        return float(loss.detach())

    def step_optimizers(self) -> None:
        """Step every optimizer on the gradients in place; first tell :attr:`on_rows` (the
        online trainer's delta log) which rows of each sparse table they change."""
        if self.on_rows is not None:
            for p in self.model.sparse_parameters():
                if p.grad is not None and p.grad.is_sparse:
                    self.on_rows(p, p.grad._indices()[0])
        for opt in self.optimizers:
            opt.step()

    @torch.inference_mode()
    def predict(self, batch: Batch) -> ModelOutput:
        """The model's full output in eval mode (attention included), without gradients."""
        self.model.eval()
        out: ModelOutput = self.model(batch.to(self.device, non_blocking=True))
        return out

    def predict_proba_many(self, batch: Batch) -> np.ndarray:
        """Click probabilities (B,) in eval mode, as the scorer would serve them."""
        return torch.sigmoid(self.predict(batch).logits).float().cpu().numpy()

    def score_then_learn(self, batch: Batch) -> np.ndarray:
        """Progressive validation: predict (eval mode), then learn; returns the predictions."""
        probs = self.predict_proba_many(batch)
        self.learn_many(batch)
        return probs

    def state_copy(self) -> dict[str, torch.Tensor]:
        """A detached copy of the model weights (for best-on-valid selection)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
