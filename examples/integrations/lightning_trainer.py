"""prunus policies in your own Lightning script: Selective Backprop + RigL on the digits data.

Run: ``python examples/integrations/lightning_trainer.py`` (offline, a few seconds on a CPU).
Needs ``pip install 'prunus[lightning,datasets]'``.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunus
from prunus.data.online import get_online
from prunus.integrations.lightning import PrunusCallback, PrunusModule
from prunus.weights import get_sparsifier


class Classifier(PrunusModule):
    """An ordinary LightningModule, except that it gives the loss of every example."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def per_example_loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")

    def validation_step(self, batch, batch_idx) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def tensors(split) -> TensorDataset:
    """A prunus dataset split as a torch dataset (images flattened to vectors)."""
    return TensorDataset(torch.from_numpy(split.x).flatten(1), torch.from_numpy(split.y))


def main() -> None:
    torch.manual_seed(0)
    data = prunus.load("digits")
    policies = PrunusCallback(
        get_online("selective_backprop", keep=0.5),  # backprop about half of the examples
        get_sparsifier("rigl", sparsity=0.9, every=20),  # 90% sparse, drop/regrow by gradient
    )

    class Digits(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return policies.dataloader(tensors(data), batch_size=64)  # the policies' sampler

        def val_dataloader(self) -> DataLoader:
            return DataLoader(tensors(data.test), batch_size=512)

    model = Classifier(int(data.x[0].size), data.num_classes)
    trainer = L.Trainer(
        max_epochs=6, callbacks=[policies], accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and loggers
        trainer.fit(model, Digits())
        accuracy = trainer.validate(model, Digits(), verbose=False)[0]["val_acc"]
    state = policies.state
    print(f"test accuracy {accuracy:.3f}")
    print(f"examples backpropagated {state.meter.examples_backpropagated} "
          f"of {6 * len(data)} seen; sparsity {state.extra['sparsity']:.3f}")


if __name__ == "__main__":
    main()
