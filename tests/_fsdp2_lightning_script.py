"""Lightning ``ModelParallelStrategy`` (FSDP2, 2 CPU processes, gloo) for tests/test_distributed.py.

Lightning starts the second process by running this script again. Usage: python tests/_fsdp2_lightning_script.py
OUT_DIR. The model's layers are ``fully_shard``ed in ``configure_model``; after ``fit`` every rank writes
OUT_DIR/rank<r>.json with the callback's last report and, as the reference, the report of the same (gathered)
weights in an unsharded copy of the model, analyzed by one process with the same seed and epoch.
"""

from __future__ import annotations

import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the test helpers and the package (when not installed)

import torch  # noqa: E402
from lightning.pytorch import LightningModule, Trainer  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch import nn  # noqa: E402

from ww_callbacks.engine import SpectralMonitor  # noqa: E402
from ww_callbacks.lightning import WeightWatcherCallback  # noqa: E402
from ww_callbacks.stopping import AlphaBelow  # noqa: E402


class ShardedNet(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(48, 96)
        self.fc2 = nn.Linear(96, 33)
        self.fc3 = nn.Linear(33, 5)
        g = torch.Generator().manual_seed(1)
        self._x, self._y = torch.randn(64, 48, generator=g), torch.randn(64, 5, generator=g)

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.fc1, self.fc2, self.fc3):
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(self._x, self._y), batch_size=16)


def main(out: str) -> None:
    # alpha of these small random layers is well above 1: the rule never fires, training runs 2 epochs
    ww = WeightWatcherCallback(per_layer=True, seed=0, early_stopping=AlphaBelow(1.0), history_path=False)
    model = ShardedNet()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_epochs=2,
        callbacks=[ww],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    # the weights did not change after the last analysis (end of the last training epoch): gather them
    full = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    plain = ShardedNet()
    plain.load_state_dict(full, strict=False)
    reference = SpectralMonitor(seed=0).analyze(plain, epoch=trainer.current_epoch - 1)
    result = {
        "rank": trainer.global_rank,
        "sharded": bool(type(model.fc1.weight).__name__ == "DTensor"),
        "history_epochs": [row["epoch"] for row in ww.history],
        "current_epoch": trainer.current_epoch,
        "report": [layer.to_dict() for layer in ww.last_report.layers],
        "reference": [layer.to_dict() for layer in reference.layers],
        "summary": ww.last_report.summary,
    }
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
