"""Trainer tests share the machine with other work: one torch thread keeps them small and steady."""

import torch

torch.set_num_threads(1)
