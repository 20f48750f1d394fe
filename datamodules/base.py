"""What every voxlab datamodule shares: named test sets and preparers that build missing data on first use."""

from __future__ import annotations

import lightning as L


class PreparedDataModule(L.LightningDataModule):
    """Subclasses set `self.test_manifests` ({name: path}) and `self.preparers` ({name: callable or None})."""

    test_manifests: dict[str, str]
    preparers: dict

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_manifests)

    def prepare_data(self) -> None:
        for prepare in self.preparers.values():
            if prepare is not None:
                prepare()
