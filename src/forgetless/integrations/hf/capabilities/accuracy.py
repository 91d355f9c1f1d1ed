"""``--keep accuracy:DATA``: accuracy of a labelled set through a *fixed* head: a logistic
regression fitted on the embeddings of the model before fine-tuning (the head you have
deployed), or the model's own classifier."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.integrations.hf.capabilities._io import (
    EvalMode,
    batches,
    device_of,
    embed_all,
    mean_pooled_embedding,
    to_device,
)
from forgetless.integrations.hf.capabilities.base import LabelledCapability, register_capability


@register_capability
class HeadAccuracy(LabelledCapability):
    """Accuracy through a fixed head on mean-pooled embeddings, or through the model's logits.

    ``head="fit"``: before fine-tuning, a multinomial logistic regression is fitted on the
    embeddings of the training rows and then frozen; accuracy measures how well the moving
    encoder still serves that head. ``head="model"``: ``argmax`` of ``model(...).logits``.
    """

    kind = "accuracy"
    metric = "accuracy"

    def __init__(
        self,
        name: str,
        train: dict[str, torch.Tensor],
        train_labels: torch.Tensor,
        test: dict[str, torch.Tensor],
        test_labels: torch.Tensor,
        head: str = "fit",
        batch_size: int = 64,
    ) -> None:
        super().__init__(name, train, train_labels, test, test_labels, batch_size)
        self.head = head
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def prepare(self, model: nn.Module) -> None:
        if self.head != "fit" or self.weight is not None:
            return
        from sklearn.linear_model import LogisticRegression

        with EvalMode(model):
            features = embed_all(model, self.train, self.batch_size)
        classifier = LogisticRegression(max_iter=2000, C=1.0)
        classifier.fit(features.numpy(), self.train_labels.numpy())
        n_classes = int(max(self.train_labels.max(), self.test_labels.max())) + 1
        weight = torch.zeros(n_classes, features.shape[1])
        bias = torch.full((n_classes,), -1e4)
        coef = torch.tensor(classifier.coef_, dtype=torch.float32)
        intercept = torch.tensor(classifier.intercept_, dtype=torch.float32)
        classes = torch.tensor(classifier.classes_, dtype=torch.long)
        if len(classes) == 2:  # sklearn stores one row for two classes
            coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
        weight[classes], bias[classes] = coef, intercept
        self.weight, self.bias = weight, bias

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head == "model":
            return model(**batch).logits
        if self.weight is None or self.bias is None:
            raise RuntimeError(f"capability {self.name}: call prepare(model) before evaluating")
        features = mean_pooled_embedding(model, batch["input_ids"], batch["attention_mask"])
        return F.linear(features.float(), self.weight.to(features.device), self.bias.to(features.device))

    def evaluate(self, model: nn.Module) -> float:
        device = device_of(model)
        correct = 0
        with EvalMode(model):
            for start, batch in zip(
                range(0, len(self.test_labels), self.batch_size), batches(self.test, self.batch_size)
            ):
                predicted = self.logits(model, to_device(batch, device)).argmax(-1).cpu()
                correct += int((predicted == self.test_labels[start : start + len(predicted)]).sum())
        return correct / len(self.test_labels)

    def replay_rows(self) -> dict[str, torch.Tensor] | None:
        return {**self.train, "labels": self.train_labels}

    def replay_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return F.cross_entropy(self.logits(model, inputs), batch["labels"])

    def fisher_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits through the capability's head: the Fisher of its label distribution."""
        return self.logits(model, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "bias": self.bias}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight, self.bias = state["weight"], state["bias"]
