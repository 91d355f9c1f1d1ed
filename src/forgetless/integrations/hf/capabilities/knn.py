"""``--keep knn:DATA``: k-NN accuracy of the frozen mean-pooled embeddings on a labelled set
(memory and queries both re-embedded at every evaluation: the quality of the embedding space)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.integrations.hf.capabilities._io import EvalMode, embed_all
from forgetless.integrations.hf.capabilities.base import LabelledCapability, register_capability


@register_capability
class KnnProbe(LabelledCapability):
    """k-NN (cosine, majority vote) accuracy of the model's current embeddings on a labelled set."""

    kind = "knn"
    metric = "knn_accuracy"

    def __init__(
        self,
        name: str,
        train: dict[str, torch.Tensor],
        train_labels: torch.Tensor,
        test: dict[str, torch.Tensor],
        test_labels: torch.Tensor,
        k: int = 10,
        batch_size: int = 64,
    ) -> None:
        super().__init__(name, train, train_labels, test, test_labels, batch_size)
        self.k = k

    def evaluate(self, model: nn.Module) -> float:
        with EvalMode(model):
            memory = F.normalize(embed_all(model, self.train, self.batch_size), dim=1)
            queries = F.normalize(embed_all(model, self.test, self.batch_size), dim=1)
        return knn_accuracy(memory, self.train_labels, queries, self.test_labels, self.k)


def knn_accuracy(
    memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor, k: int
) -> float:
    """Majority vote of the ``k`` most similar memory rows (ties: the smallest label)."""
    k = min(k, memory.shape[0])
    nearest = (queries @ memory.T).topk(k, dim=1).indices
    votes = F.one_hot(memory_labels[nearest], int(memory_labels.max()) + 1).sum(1)
    return float((votes.argmax(1) == query_labels).float().mean())
