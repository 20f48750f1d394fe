"""Evaluation on every test set of the datamodule, shared by the LightningModules: one copy of the module's
`make_metrics()` per test set, logged under `test/` (the first set) and `test_<name>/` (the others). The module
provides `make_metrics()` and `evaluate(batch, metrics, prefix)`."""

from __future__ import annotations

from torch import nn

from lit_modules.steps import all_skipped


def test_set_names(module) -> list[str]:
    return getattr(module.trainer.datamodule, "test_set_names", None) or ["test"]


def test_prefix(module, dataloader_idx: int) -> str:
    """`test` for the first test set, `test_<name>` for the others."""
    return "test" if dataloader_idx == 0 else f"test_{test_set_names(module)[dataloader_idx]}"


class PerTestSetEvaluation:
    def on_test_start(self) -> None:
        self.test_metrics = nn.ModuleList(self.make_metrics() for _ in self.test_set_names()).to(self.device)

    def test_set_names(self) -> list[str]:
        return test_set_names(self)

    def test_prefix(self, dataloader_idx: int) -> str:
        return test_prefix(self, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not all_skipped(batch):
            self.evaluate(batch, self.test_metrics[dataloader_idx], self.test_prefix(dataloader_idx))
