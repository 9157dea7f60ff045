"""A small Lightning fit on CPU with actid's MeasureCallback; tests/test_integrations.py runs it in a subprocess
(Lightning's DDP launcher starts the other processes by running this file again).

    python tests/lightning_fit.py OUT DEVICES EPOCHS [CKPT]
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from actid.integrations.lightning import MeasureCallback

LAYERS = ["body.1", "body.3"]
MEASURES = {"id": {}, "participation_ratio": {}}


class Net(L.LightningModule):
    def __init__(self, width: int = 32, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, _index):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 20, generator=g)
    return x, x[:, :4].argmax(1)


if __name__ == "__main__":
    out, devices, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ckpt = sys.argv[4] if len(sys.argv) > 4 else None
    L.seed_everything(0, verbose=False)
    x, y = data()
    model = Net()
    callback = MeasureCallback((x[:400], y[:400]), layers=LAYERS, run_dir=out / "run", measures=MEASURES,
                               every_n_steps=4)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_epochs=epochs, logger=CSVLogger(out, name="logs", version=0),
                        callbacks=[callback, ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=64), ckpt_path=ckpt)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), out / "final.pt")
