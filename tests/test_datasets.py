import json

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.audio_datamodule import AudioDataModule
from datamodules.collate import collate_audio
from datamodules.datasets import ManifestAudioDataset
from datamodules.manifest import read_manifest
from datamodules.sampling import DurationBucketBatchSampler
from research.audio import BadAudioError
from tests.conftest import sine


@pytest.fixture
def mixed_manifest(tmp_path):
    """Two good files plus each kind of bad input, as one manifest."""
    files = {
        "good16k": lambda p: sf.write(p, sine(1.0, 16000), 16000),
        "good8k": lambda p: sf.write(p, sine(1.0, 8000), 8000),
        "stereo": lambda p: sf.write(p, sine(1.0, 16000, channels=2), 16000),
        "corrupt": lambda p: p.write_bytes(b"garbage" * 10),
        "empty": lambda p: sf.write(p, np.zeros(0, np.float32), 16000),
        "nan": lambda p: sf.write(p, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT"),
        "missing": lambda p: None,
    }
    rows = []
    for name, make in files.items():
        make(tmp_path / f"{name}.wav")
        rows.append(
            {"id": name, "audio_filepath": f"{name}.wav", "duration": 1.0, "sample_rate": 16000, "text": name}
        )
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_items_are_skipped_and_counted(mixed_manifest, caplog):
    dataset = ManifestAudioDataset(read_manifest(mixed_manifest), sample_rate=16000)
    items = [dataset[i] for i in range(len(dataset))]
    kept = [item["id"] for item in items if item is not None]
    assert kept == ["good16k", "good8k", "stereo"]
    batch = collate_audio(items)
    assert batch["n_skipped"] == 4
    assert batch["audio"].shape == (3, 1, 16000)  # 8 kHz resampled, stereo down-mixed
    assert batch["audio_lens"].tolist() == [16000, 16000, 16000]
    assert "corrupt.wav" in caplog.text and "zero-length" in caplog.text


def test_strict_mode_raises_naming_file_and_manifest_line(mixed_manifest):
    dataset = ManifestAudioDataset(read_manifest(mixed_manifest), sample_rate=16000, strict=True)
    with pytest.raises(BadAudioError, match=r"corrupt\.wav: unreadable.*mixed\.jsonl:4"):
        dataset[3]


def test_all_bad_batch_collates_to_empty():
    batch = collate_audio([None, None])
    assert batch["audio"].shape[0] == 0 and batch["n_skipped"] == 2


def test_crops_have_fixed_length_and_follow_seed_and_epoch(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", rng.uniform(-0.5, 0.5, 32000).astype(np.float32), 16000, subtype="FLOAT")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "x", "audio_filepath": "long.wav", "duration": 2.0, "sample_rate": 16000}) + "\n"
    )
    dataset = ManifestAudioDataset(read_manifest(tmp_path / "m.jsonl"), sample_rate=16000, crop_seconds=0.5)
    first = dataset[0]["audio"]
    assert first.shape == (1, 8000)
    assert torch.equal(first, dataset[0]["audio"])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0]["audio"])


def test_bucket_batches_respect_limits_and_cover_everything():
    durations = list(np.random.default_rng(0).uniform(0.5, 5.0, 200))
    sampler = DurationBucketBatchSampler(
        durations, batch_size=16, max_batch_seconds=30, num_buckets=5, seed=3
    )
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert len(batch) <= 16
        assert max(durations[i] for i in batch) * len(batch) <= 30 or len(batch) == 1
    assert batches == list(sampler)  # same epoch, same order
    sampler.set_epoch(1)
    assert batches != list(sampler)


def test_bucket_sampler_shards_across_ranks(monkeypatch):
    durations = [1.0 + (i % 7) for i in range(101)]
    sampler = DurationBucketBatchSampler(durations, batch_size=4, seed=0)
    shards = []
    for rank in range(3):
        monkeypatch.setattr("datamodules.sampling.distributed_rank_and_size", lambda r=rank: (r, 3))
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1  # equal batch counts keep DDP ranks in step
    covered = {i for shard in shards for batch in shard for i in batch}
    assert covered == set(range(101))


def test_datamodule_views_and_errors(mixed_manifest):
    with pytest.raises(ValueError, match="unknown view"):
        AudioDataModule(train_manifest=str(mixed_manifest), view="spectrograms")
    with pytest.raises(ValueError, match="crop_seconds"):
        AudioDataModule(train_manifest=str(mixed_manifest), view="crops")
    captions = AudioDataModule(train_manifest=str(mixed_manifest), view="captions")
    with pytest.raises(Exception, match="missing field 'caption'"):
        captions.setup("fit")
    dm = AudioDataModule(train_manifest=str(mixed_manifest), batch_size=4, max_duration=10)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(b["n_skipped"] for b in batches) == 4
    assert sum(b["audio"].shape[0] for b in batches) == 3


def test_train_fraction_is_a_seeded_subset_of_training_rows_only(mixed_manifest):
    def ids(**kwargs) -> tuple[list[str], int]:
        dm = AudioDataModule(train_manifest=str(mixed_manifest), val_manifest=str(mixed_manifest), **kwargs)
        dm.setup("fit")
        return [row["id"] for row in dm.datasets["train"].manifest.rows], len(dm.datasets["val"].manifest)

    subset, val_rows = ids(train_fraction=0.3, seed=1)
    assert len(subset) == 2 and val_rows == 7  # round(7 x 0.3); validation keeps every row
    assert ids(train_fraction=0.3, seed=1)[0] == subset
    assert any(ids(train_fraction=0.3, seed=s)[0] != subset for s in range(2, 6))
    with pytest.raises(ValueError, match="train_fraction"):
        AudioDataModule(train_manifest=str(mixed_manifest), train_fraction=0.0)


def test_frame_aligned_arrays_are_cropped_with_the_audio(tmp_path):
    """A 100 Hz array whose row i holds i must start at the crop's start time and cover the crop."""
    sf.write(tmp_path / "a.wav", sine(3.0, 16000), 16000)
    np.save(tmp_path / "a.npy", np.repeat(np.arange(300, dtype=np.float32)[:, None], 2, axis=1))
    rows = [
        {
            "id": "a",
            "audio_filepath": "a.wav",
            "duration": 3.0,
            "sample_rate": 16000,
            "feats": "a.npy",
            "feats_rate": 100,
        }
    ]
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]) + "\n")
    dataset = ManifestAudioDataset(
        read_manifest(tmp_path / "m.jsonl"), sample_rate=16000, crop_seconds=0.5, array_fields=("feats",)
    )
    for epoch in range(3):
        dataset.set_epoch(epoch)
        start = dataset.crop_start(48000, 0)
        item = dataset[0]
        assert item["feats"].shape == (50, 2)
        assert item["feats"][0, 0] == round(start / 16000 * 100)
        assert torch.allclose(
            item["audio"], torch.from_numpy(sine(3.0, 16000))[None, start : start + 8000], atol=1e-4
        )
    batch = collate_audio([dataset[0], None])
    assert batch["feats"].shape == (1, 50, 2) and batch["feats_lens"].tolist() == [50]


def test_missing_array_is_bad_input(tmp_path):
    sf.write(tmp_path / "a.wav", sine(1.0, 16000), 16000)
    row = {"id": "a", "audio_filepath": "a.wav", "duration": 1.0, "sample_rate": 16000, "feats": "gone.npy"}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert ManifestAudioDataset(manifest, sample_rate=16000, array_fields=("feats",))[0] is None
    with pytest.raises(BadAudioError, match="gone.npy"):
        ManifestAudioDataset(manifest, sample_rate=16000, array_fields=("feats",), strict=True)[0]


def test_training_epochs_differ_under_lightning_and_validation_stays_fixed(tmp_path):
    """Lightning's own set_epoch never reaches a batch sampler: the training loader advances itself after each
    full pass, so order and crops change per epoch; the validation loader keeps epoch 0."""
    import lightning as L
    import torch

    from datamodules.sampling import DurationBucketBatchSampler, ResumableDataLoader

    class Epochs(torch.utils.data.Dataset):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 8

        def __getitem__(self, index):
            return torch.tensor([float(index), float(self.epoch)])

    class Record(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.batches = []

        def training_step(self, batch, batch_idx):
            self.batches.append(batch.tolist())
            return self.weight * 0.0 + batch.sum() * 0.0 + self.weight.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def loader(shuffle):
        sampler = DurationBucketBatchSampler([1.0] * 8, shuffle=shuffle, seed=0, batch_size=4, num_buckets=1)
        return ResumableDataLoader(Epochs(), batch_sampler=sampler, advance_epochs=shuffle)

    def fit(**limits) -> Record:
        module = Record()
        L.Trainer(
            max_epochs=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            **limits,
        ).fit(module, loader(True))
        return module

    module = fit()
    epochs = [int(batch[0][1]) for batch in module.batches]
    assert epochs == [0, 0, 1, 1, 2, 2]
    orders = [sorted(int(i) for b in module.batches[e * 2 : e * 2 + 2] for i, _ in b) for e in range(3)]
    assert all(order == list(range(8)) for order in orders)  # each epoch sees every item once
    assert [[int(i) for i, _ in b] for b in module.batches[:2]] != [
        [int(i) for i, _ in b] for b in module.batches[2:4]
    ]
    cut = fit(limit_train_batches=1)  # passes cut short by limit_train_batches are epochs too
    assert [int(batch[0][1]) for batch in cut.batches] == [0, 1, 2]
    val = loader(False)
    assert [b.tolist() for b in val] == [b.tolist() for b in val]  # validation: the same batches every pass
    assert val.batch_sampler.epoch == 0
