"""nnU-Net's own trainer, changed only where training a small demo model on two CPU cores
needs it: a short schedule, AdamW with polynomial decay, a chosen share of foreground patches
and, optionally, narrower rotations and no mirroring. Both demo models (spine, lesion) use it,
so what they change from nnU-Net is written once.

nnU-Net names the results folder after the trainer class (`<Trainer>__<Plans>__<Config>`),
so each model gets its own class name. torch and nnU-Net are imported on call: importing the
training scripts (their tests do) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    """What a CPU training run changes from nnU-Net's defaults."""

    epochs: int
    lr: float  # initial AdamW learning rate
    iterations: int  # training iterations per epoch (nnU-Net: 250)
    foreground: float  # share of patches forced onto foreground (nnU-Net: 0.33)
    # Rotation range in degrees (nnU-Net: 180) and mirroring off, for a model whose classes
    # differ only by their place along the spine; None keeps nnU-Net's augmentation.
    rotation_deg: float | None = None
    # The loss: nnU-Net's Dice is per patch unless `batch_dice`, so a head that fires on a patch
    # without its class gets no Dice gradient; only the cross-entropy (weight `ce_weight`,
    # nnU-Net: 1) sees it. Pooling the Dice over the batch makes such false positives count
    # whenever the other patch holds the class.
    batch_dice: bool | None = None  # None: the plans' choice
    ce_weight: float = 1.0


def cpu_trainer(name: str, schedule: Schedule) -> type:
    """A subclass of nnU-Net's trainer, called `name`, that trains with `schedule` on the CPU."""
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cpu = torch.device("cpu")

    class Trainer(nnUNetTrainer):
        def __init__(  # type: ignore[no-untyped-def]
            self, plans, configuration, fold, dataset_json, device=cpu
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = schedule.epochs
            self.num_iterations_per_epoch = schedule.iterations
            self.num_val_iterations_per_epoch = 4
            self.initial_lr = schedule.lr
            self.save_every = 2
            self.oversample_foreground_percent = schedule.foreground
            if schedule.batch_dice is not None:  # read when the loss is built (initialize)
                self.configuration_manager.configuration["batch_dice"] = schedule.batch_dice

        def _build_loss(self):  # type: ignore[no-untyped-def]
            loss = super()._build_loss()
            getattr(loss, "loss", loss).weight_ce = schedule.ce_weight  # inside deep supervision
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            opt = torch.optim.AdamW(
                self.network.parameters(), lr=self.initial_lr, weight_decay=1e-4
            )
            return opt, PolyLRScheduler(opt, self.initial_lr, self.num_epochs)

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # type: ignore[no-untyped-def]
            rot, dummy_2d, initial, mirror = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            if schedule.rotation_deg is None:
                return rot, dummy_2d, initial, mirror
            limit = schedule.rotation_deg / 180 * np.pi
            self.inference_allowed_mirroring_axes = None
            return (-limit, limit), dummy_2d, initial, None

    Trainer.__name__ = Trainer.__qualname__ = name
    return Trainer
