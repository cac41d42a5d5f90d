"""What every model shares: the config, the output type, embeddings, the prediction head, Dice.

A model is a :class:`CTRModel`: it embeds target and behaviours with the same item and category
tables (each row ``dim`` wide, a behaviour or target token is their concatenation, ``2 * dim``),
turns the history into a few user-interest vectors and feeds ``[target, *interests, target_dense]``
to the head: BatchNorm → 200 → PReLU/Dice → 80 → PReLU/Dice → 1, as in the DARE reference code.
``forward`` always returns a :class:`ModelOutput`.

>>> cfg = ModelConfig(n_items=100, n_categories=10, dim=8)
>>> cfg.attn_dim, cfg.token_dim
(8, 16)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from models.batch import Batch
from models.embedding import EmbeddingTable
from models.layers import once_per_user

Activation = Literal["prelu", "dice"]
Sequence = Literal["recent", "cluster"]
Values = Literal["projected", "tokens"]  # TWIN / TWIN-V2 ESU values (models.twin)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of every model; each model reads the fields it needs.

    Widths: ``dim`` is one embedding table's row width; tokens are ``[item, category]`` rows, so
    ``token_dim = 2 * dim``. ``attn_dim`` is DARE's attention-table width d_A (``None`` → ``dim``).
    """

    n_items: int  # rows of the item table (= IdMap capacity), row 0 = padding
    n_categories: int  # rows of the category table
    dim: int = 64  # representation embedding width per table (DARE's d_R)
    attn_dim: int | None = None  # DARE's attention embedding width d_A; None → dim
    dense_features: int = 0  # F: side features per behaviour / cluster / target
    seq_len: int = 200  # longest recent sequence (sizes position and age embeddings)
    topk: int = 20  # behaviours kept by the search stage (TWIN, TWIN-V2, DARE)
    mlp: tuple[int, ...] = (200, 80)  # prediction head hidden layers
    activation: Activation = "prelu"  # head and DIN attention-unit activation
    sparse_embeddings: bool = True  # sparse gradients for the id tables
    dropout: float = 0.0
    n_heads: int = 2  # TWIN/TWIN-V2 ESU, BST and DSIN self-attention heads
    attention_mlp: tuple[int, ...] = (80, 40)  # DIN activation unit hidden layers
    din_softmax: bool = True  # DIN: softmax(s/√D) as its public code; False: the paper's raw s
    aux_loss_weight: float = 1.0  # DIEN: ModelOutput.aux_loss is already multiplied by it
    max_sessions: int = 10  # DSIN: most recent sessions kept (10 x 20 = the 200 of seq_len)
    session_len: int = 20  # DSIN: most recent behaviours kept per session
    transformer_layers: int = 1  # BST
    bst_len: int = 20  # BST: most recent behaviours in its sequence (the BST paper's 20)
    cross_features: bool = True  # DIN, DSIN, BST head: also target ⊙ each interest vector
    twin_v2_recent: bool = False  # TWIN-V2: also attend over the recent sequence
    twin_v2_age: bool = True  # TWIN-V2: time-gap bias by estimated cluster age (models.twin_v2)
    twin_v2_log_size: bool = True  # TWIN-V2: ESU logits + ln N (the paper); False: a departure
    twin_values: Values = "projected"  # TWIN, TWIN-V2: W_v, W_o (the paper) or the tokens (DARE's)

    def __post_init__(self) -> None:
        if self.attn_dim is None:
            object.__setattr__(self, "attn_dim", self.dim)
        object.__setattr__(self, "mlp", tuple(self.mlp))
        object.__setattr__(self, "attention_mlp", tuple(self.attention_mlp))
        problems = self._problems()
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        checks = {
            "n_items must be >= 2": self.n_items >= 2,
            "n_categories must be >= 2": self.n_categories >= 2,
            "dim must be >= 1": self.dim >= 1,
            "attn_dim must be >= 1": self.attn_dim is not None and self.attn_dim >= 1,
            "dense_features must be >= 0": self.dense_features >= 0,
            "seq_len must be >= 1": self.seq_len >= 1,
            "topk must be >= 1": self.topk >= 1,
            "mlp sizes must be >= 1": all(h >= 1 for h in self.mlp),
            "attention_mlp sizes must be >= 1": all(h >= 1 for h in self.attention_mlp),
            "activation must be 'prelu' or 'dice'": self.activation in ("prelu", "dice"),
            "dropout must be in [0, 1)": 0.0 <= self.dropout < 1.0,
            "n_heads must be >= 1 and divide 2 * dim": self.n_heads >= 1
            and self.token_dim % self.n_heads == 0,
            "aux_loss_weight must be >= 0": self.aux_loss_weight >= 0,
            "max_sessions must be >= 1": self.max_sessions >= 1,
            "session_len must be >= 1": self.session_len >= 1,
            "transformer_layers must be >= 1": self.transformer_layers >= 1,
            "bst_len must be >= 1": self.bst_len >= 1,
            "twin_values must be 'projected' or 'tokens'": self.twin_values
            in ("projected", "tokens"),
        }
        return [message for message, ok in checks.items() if not ok]

    @property
    def token_dim(self) -> int:
        """Width of a target or behaviour token: ``[item, category]``."""
        return 2 * self.dim

    @property
    def attn_token_dim(self) -> int:
        """Width of a DARE attention token: ``[item, category]`` from the attention tables."""
        assert self.attn_dim is not None  # resolved in __post_init__
        return 2 * self.attn_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); :meth:`from_dict` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Reads :meth:`to_dict`; a dict written before ``cross_features`` or ``twin_v2_age``
        existed describes a model without them (its head and attention are sized so), hence the
        ``False`` when the key is absent."""
        return cls(**{"cross_features": False, "twin_v2_age": False, **data})


@dataclass(frozen=True)
class ModelOutput:
    """What ``forward`` returns, for every model.

    ``attention``: (B, S) weight of each position of the sequence the model attended (the recent
    sequence, S = L, or the cluster sequence, S = C; see ``CTRModel.attends``), zero on padding and
    on positions the search stage dropped; ``None`` for mean pooling. ``attended_index``: (B, K)
    positions kept by a search stage, -1 where a slot fell on padding; ``None`` for one-stage
    models. ``aux_loss``: scalar to add to the main loss (DIEN, training mode only), else ``None``.
    """

    logits: torch.Tensor  # (B,)
    attention: torch.Tensor | None = None  # (B, S)
    attended_index: torch.Tensor | None = None  # (B, K) int64
    aux_loss: torch.Tensor | None = None  # ()


class Dice(nn.Module):
    """DIN's data-adaptive activation: ``p·x + (1 − p)·α·x`` with ``p = sigmoid(BN(x))``.

    Normalises over every leading dimension (a (B, L, n) input is treated as B·L rows).

    >>> Dice(4)(torch.randn(3, 5, 4)).shape
    torch.Size([3, 5, 4])
    """

    def __init__(self, n: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(n, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., n)
        p = torch.sigmoid(self.bn(x.reshape(-1, x.shape[-1])).view_as(x))
        return p * x + (1 - p) * self.alpha * x


def make_activation(name: Activation, n: int) -> nn.Module:
    """Dice over n channels, or one shared PReLU slope (the DARE reference's PReLU(1, 0.1))."""
    return Dice(n) if name == "dice" else nn.PReLU(num_parameters=1, init=0.1)


def mlp(
    n_in: int, hidden: tuple[int, ...], activation: Activation, dropout: float
) -> nn.Sequential:
    """Linear → activation (→ dropout) per hidden size, then Linear → 1."""
    layers: list[nn.Module] = []
    for n_out in hidden:
        layers += [nn.Linear(n_in, n_out), make_activation(activation, n_out)]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        n_in = n_out
    return nn.Sequential(*layers, nn.Linear(n_in, 1))


class PredictionHead(nn.Module):
    """BatchNorm → MLP → one logit (DARE reference: BN → 200 → PReLU → 80 → PReLU → 1)."""

    def __init__(self, n_in: int, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(n_in)
        self.mlp = mlp(n_in, config.mlp, config.activation, config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_in) → (B,)
        return self.mlp(self.norm(x)).squeeze(-1)


class CTRModel(nn.Module):
    """Base of every model: shared target/behaviour embeddings, the head, the optimizer split.

    Subclasses call ``super().__init__(config, n_features)`` with the width of the interest
    features they pass to :meth:`predict`, and implement ``forward(batch) -> ModelOutput``.
    """

    name: ClassVar[str] = "base"
    attends: ClassVar[Sequence | None] = "recent"  # which sequence ModelOutput.attention covers
    encoder: ClassVar[tuple[str, ...]] = ()  # attributes that make up the sequence encoder

    def __init__(self, config: ModelConfig, n_features: int) -> None:
        super().__init__()
        self.config = config
        self.item = EmbeddingTable(config.n_items, config.dim, config.sparse_embeddings)
        self.category = EmbeddingTable(config.n_categories, config.dim, config.sparse_embeddings)
        self.head = PredictionHead(config.token_dim + n_features + config.dense_features, config)

    def embed(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """(...) rows → (..., 2·dim) tokens ``[item, category]`` (once for a shared history)."""
        return once_per_user(self._embed, items, categories)

    def _embed(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item(items), self.category(categories)], dim=-1)

    def embed_pairs(self, *pairs: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """``[self.embed(items, categories) for ...]``; when training, each table is looked up
        once for all pairs, so each gets one already-coalesced sparse gradient."""
        if not self.training:
            return [self.embed(items, categories) for items, categories in pairs]
        items = self.item.many(*(items for items, _ in pairs))
        categories = self.category.many(*(categories for _, categories in pairs))
        return [torch.cat(ic, dim=-1) for ic in zip(items, categories, strict=True)]

    def embed_target(self, batch: Batch) -> torch.Tensor:  # (B, D)
        return self.embed(batch.target_item, batch.target_category)

    def embed_history(self, batch: Batch) -> torch.Tensor:  # (B, L, D)
        return self.embed(batch.hist_item, batch.hist_category)

    def interests(self, target: torch.Tensor, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``features`` then ``target ⊙ h`` for each h when ``config.cross_features``: the
        target-aware head input ``[v_t, h, v_t ⊙ h]`` that TWIN and DARE always use and that the
        DARE reference code gives its DIN too (``use_cross_feature``)."""
        if not self.config.cross_features:
            return features
        return [*features, *(target * h for h in features)]

    def predict(
        self, target: torch.Tensor, features: list[torch.Tensor], batch: Batch
    ) -> torch.Tensor:
        """Head over ``[target, *features, target_dense]``: (B, D), [(B, ·)] → (B,) logits."""
        return self.head(torch.cat([target, *features, batch.target_dense], dim=-1))

    def forward(self, batch: Batch) -> ModelOutput:
        raise NotImplementedError

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Weights of the embedding tables with sparse gradients (for SparseAdam / SGD)."""
        tables = [m for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]
        return [m.weight for m in tables if isinstance(m.weight, nn.Parameter)]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (for Adam with weight decay)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The dense parameters of the sequence encoder (self-attention blocks, recurrent layers
        and their position encodings), the attributes named in ``encoder``: the trainer gives
        them their own learning rate (``LearnerConfig.encoder_lr``). Empty for models without."""
        return [p for n, p in self.named_parameters() if n.split(".", 1)[0] in self.encoder]
