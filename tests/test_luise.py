"""LUISE pretraining: masking, random-projection labels, the masked-prediction loss and the LightningModule."""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from datamodules.manifest import read_manifest
from experiments.core.checkpoints import load_checkpoint, load_submodule
from experiments.core.compose import compose_config
from experiments.core.dumps import dump_per_utterance
from experiments.core.luise import alignment_quality, fit_kmeans, probe_manifests, write_labels
from experiments.core.runner import check_training_modes
from lit_modules.luise import LUISEModule
from research.audio import load_audio
from research.encoder import ConformerEncoder
from research.features import SpecAugment
from research.probes import CTCProbeHead, cluster_quality, ctc_probe_error_rates
from research.ssl.labels import random_projection_labels
from research.ssl.layer_probe import SILENCE, best_layer, digit_alignment, probe_layers
from research.ssl.masking import MaskedFeatures, frames_fully_masked, span_mask
from research.ssl.targets import (
    RandomProjectionQuantizer,
    label_perplexity,
    masked_prediction_loss,
    stack_frames,
)
from research.text import DIGIT_WORDS, CharVocabulary
from research.tokenizer.quantizer import nearest_codes
from tests.conftest import fit_on_batch


def tiny_encoder() -> ConformerEncoder:
    return ConformerEncoder(
        d_model=32, num_layers=2, num_heads=2, ffn_dim=64, kernel_size=7, dropout=0.0, subsampling_channels=8
    )


def test_masked_fraction_matches_its_expectation_and_spares_padding():
    lens = torch.tensor([4000] * 31 + [1000])
    mask = span_mask(lens, 4000, start_prob=0.01, span=40, generator=torch.Generator().manual_seed(0))
    expected = 1 - (1 - 0.01) ** 40  # 0.331
    assert abs(float(mask[:31].float().mean()) - expected) < 0.02
    assert not mask[31, 1000:].any()
    # spans are contiguous runs of at least `span` frames (unless cut by the end)
    runs = torch.diff(
        mask[0].int(), prepend=torch.zeros(1, dtype=torch.int), append=torch.zeros(1, dtype=torch.int)
    )
    starts, ends = (runs == 1).nonzero().flatten(), (runs == -1).nonzero().flatten()
    assert ((ends - starts)[:-1] >= 40).all()


def test_span_masks_repeat_under_a_seed():
    lens = torch.tensor([300, 200])

    def draw(seed: int) -> torch.Tensor:
        return span_mask(lens, 300, start_prob=0.05, span=4, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


def test_target_frames_are_masked_only_when_all_inputs_are():
    mask = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert frames_fully_masked(mask, 4, 3).tolist() == [
        [True, False, False]
    ]  # last frame padded with visible


@pytest.mark.parametrize("fill", ["noise", "learned"])
def test_masked_frames_are_replaced_and_others_kept(fill):
    feats = torch.randn(2, 10, 80)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3:6] = True
    out = MaskedFeatures(80, fill=fill)(feats, mask)
    assert torch.equal(out[~mask], feats[~mask])
    assert not torch.allclose(out[mask], feats[mask])


def test_random_projection_labels_by_hand_and_reproducible():
    quantizer = RandomProjectionQuantizer(
        input_dim=12, codebook_dim=4, codebook_size=32, num_codebooks=2, seed=7
    )
    x = torch.randn(2, 5, 12)
    labels = quantizer(x)
    assert labels.shape == (2, 5, 2)
    for c in range(2):
        projected = F.normalize(x @ quantizer.projection[c], dim=-1)
        distances = torch.cdist(projected.reshape(-1, 4), quantizer.codebooks[c])
        assert torch.equal(labels[..., c].flatten(), distances.argmin(-1))
    assert torch.allclose(quantizer.codebooks.norm(dim=-1), torch.ones(2, 32))
    same = RandomProjectionQuantizer(input_dim=12, codebook_dim=4, codebook_size=32, num_codebooks=2, seed=7)
    other = RandomProjectionQuantizer(input_dim=12, codebook_dim=4, codebook_size=32, num_codebooks=2, seed=8)
    assert torch.equal(same(x), labels) and not torch.equal(other(x), labels)


def test_stacked_frames_match_the_encoder_frame_count():
    encoder = tiny_encoder().eval()
    for samples in (16000, 16160, 15999, 8321):
        feats, lens = encoder.features(torch.randn(1, 1, samples) * 0.1, torch.tensor([samples]))
        out = encoder.encode_features(feats, lens)
        assert stack_frames(feats, 4).shape[1] == out.hidden.shape[1] == int(out.lens)


def test_loss_ignores_unmasked_and_padded_frames():
    logits = torch.randn(2, 6, 1, 10, requires_grad=True)
    labels = torch.randint(0, 10, (2, 6, 1))
    selected = torch.zeros(2, 6, dtype=torch.bool)
    selected[0, 1:3] = True
    selected[1, 4] = True
    loss, accuracy = masked_prediction_loss(logits, labels, selected)
    by_hand = F.cross_entropy(logits[selected][:, 0], labels[selected][:, 0])
    assert torch.allclose(loss, by_hand)
    loss.backward()
    assert (logits.grad[~selected] == 0).all() and (logits.grad[selected] != 0).any()
    changed = logits.detach().clone()
    changed[~selected] += 100.0
    assert torch.allclose(masked_prediction_loss(changed, labels, selected)[0], loss)


def test_label_perplexity_counts_used_labels():
    assert torch.isclose(label_perplexity(torch.tensor([0, 1, 2, 3]), 8), torch.tensor(4.0))
    assert torch.isclose(label_perplexity(torch.tensor([5, 5, 5]), 8), torch.tensor(1.0))


def luise_module(**overrides) -> LUISEModule:
    torch.manual_seed(0)
    arguments = {
        "encoder": tiny_encoder(),
        "quantizer": RandomProjectionQuantizer(input_dim=320, codebook_size=64, seed=0),
        "optimizer": partial(torch.optim.AdamW, lr=3e-3),
        "mask_start_prob": 0.05,
        "mask_span": 10,
        **overrides,
    }
    return LUISEModule(**arguments)


def test_pretraining_loss_falls_and_accuracy_rises(speech_batch):
    history = fit_on_batch(
        luise_module(), speech_batch, 40, ("train/loss", "train/accuracy", "train/masked_fraction")
    )
    loss, accuracy = history.values["train/loss"], history.values["train/accuracy"]
    assert sum(loss[-5:]) / 5 < 0.7 * sum(loss[:5]) / 5
    assert sum(accuracy[-5:]) > sum(accuracy[:5])
    assert 0.1 < sum(history.values["train/masked_fraction"]) / 40 < 0.6


def test_kmeans_label_targets_come_from_the_batch(speech_batch):
    module = luise_module(quantizer=None, label_field="kmeans_labels", num_labels=5)
    frames = 16  # fewer labels than encoder frames (61): the rest are not targets
    batch = {
        **speech_batch,
        "kmeans_labels": torch.randint(0, 5, (4, frames)),
        "kmeans_labels_lens": torch.full((4,), frames),
    }
    values = module.masked_step(batch, torch.Generator().manual_seed(0))
    assert values["loss"] > 0 and values["label_perplexity"] <= 5
    with pytest.raises(KeyError, match="array_fields"):
        module.masked_step(speech_batch)


def test_misconfigured_targets_are_refused():
    with pytest.raises(ValueError, match="exactly one"):
        luise_module(label_field="kmeans_labels", num_labels=5)
    with pytest.raises(ValueError, match="num_labels"):
        luise_module(quantizer=None, label_field="kmeans_labels")
    with pytest.raises(ValueError, match="input_dim"):
        luise_module(quantizer=RandomProjectionQuantizer(input_dim=80))


def test_cluster_quality_by_hand():
    perfect = cluster_quality(torch.tensor([3, 3, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert perfect == pytest.approx({"cluster_purity": 1.0, "reference_purity": 1.0, "pnmi": 1.0})
    blind = cluster_quality(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))
    assert blind == pytest.approx({"cluster_purity": 0.75, "reference_purity": 1.0, "pnmi": 0.0})
    # two clusters that each split both references evenly carry no information
    assert cluster_quality(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))["pnmi"] == pytest.approx(
        0.0
    )


def spelled_features(text: str, vocab: CharVocabulary) -> torch.Tensor:
    """Two frames per character: its one-hot, and a flag on the first frame (so repeated letters stay apart)."""
    frames = []
    for char_id in vocab.encode(text):
        frame = torch.zeros(len(vocab) + 1)
        frame[char_id] = 1.0
        frames += [torch.cat([frame[:-1], torch.ones(1)]), frame]
    return torch.stack(frames)


def test_ctc_probe_reads_what_the_features_spell_and_not_noise():
    vocab, rng = CharVocabulary(), random.Random(0)
    texts = [" ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(1, 3))) for _ in range(48)]
    spelled = [(spelled_features(t, vocab), t) for t in texts]
    noise = [(torch.randn_like(f), t) for f, t in spelled]
    probe = dict(steps=150, hidden=32, lr=1e-2)
    assert ctc_probe_error_rates(spelled[:40], spelled[40:], **probe)["cer"] < 0.1
    assert ctc_probe_error_rates(noise[:40], noise[40:], **probe)["cer"] > 0.5


def test_ctc_probe_head_ignores_padding():
    torch.manual_seed(0)
    head = CTCProbeHead(8, 5, hidden=4)
    feats = torch.randn(2, 7, 8)
    batched = head(feats, torch.tensor([7, 4]))
    assert torch.allclose(batched[1, :4], head(feats[1:, :4], torch.tensor([4]))[0], atol=1e-6)


def test_layer_probe_finds_the_layer_that_encodes_the_digits():
    """Layer 1 holds a one-hot code of the aligned digit, layer 0 noise: the cluster scores must say so."""
    generator = torch.Generator().manual_seed(0)

    def utterance(words: list[str]) -> tuple[dict, list[torch.Tensor]]:
        segments = [[0.1 + 0.5 * i, 0.5 + 0.5 * i, w] for i, w in enumerate(words)]
        frames = int((0.1 + 0.5 * len(words)) * 25)
        reference = digit_alignment(segments, frames, 25.0)
        digits = F.one_hot(reference, SILENCE + 1).float() * 5 + 0.01 * torch.randn(frames, SILENCE + 1)
        noise = torch.randn(frames, SILENCE + 1, generator=generator)
        return {"text": " ".join(words), "segments": segments}, [noise, digits]

    words = [[DIGIT_WORDS[(i + j) % 10] for j in range(3)] for i in range(10)]
    data = [utterance(w) for w in words]
    rows = probe_layers(data, data, frame_rate=25.0, steps=2, clusters=11, hidden=0)
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[1]["cluster_purity"] == pytest.approx(1.0) and rows[1]["pnmi"] > 0.95
    assert rows[0]["pnmi"] < 0.3
    assert best_layer(rows) == 1


def test_layer_probe_over_manifests_gives_one_row_per_layer(tiny_data_dir):
    digits = tiny_data_dir / "connected_digits"
    torch.manual_seed(0)
    settings = dict(train_limit=16, test_limit=8, steps=3, clusters=4)
    rows = probe_manifests(tiny_encoder(), digits / "train.jsonl", digits / "val.jsonl", **settings)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert {"wer", "cer", "pnmi", "cluster_purity"} <= set(rows[0])
    assert best_layer([{"layer": 0, "wer": 0.5}, {"layer": 1, "wer": 0.2}, {"layer": 2, "wer": 0.9}]) == 1
    aligned = [
        {"layer": 0, "wer": 0.3, "pnmi": 0.2},
        {"layer": 1, "wer": 0.5, "pnmi": 0.4},
        {"layer": 2, "wer": 0.6, "pnmi": 0.3},
    ]
    assert best_layer(aligned) == 1  # PNMI decides where the rows have it
    assert best_layer(aligned, by="wer") == 0  # the speech_llm pipeline's choice of the layer the LLM reads
    with pytest.raises(ValueError, match="by must be"):
        best_layer(aligned, by="cer")
    with pytest.raises(ValueError, match="needs every row's PNMI"):
        best_layer([{"layer": 0, "wer": 0.5}], by="pnmi")


def test_label_quality_against_the_digit_alignment(tiny_data_dir):
    manifest_path = tiny_data_dir / "connected_digits" / "val.jsonl"
    encoder = tiny_encoder().eval()
    quantizer = RandomProjectionQuantizer(input_dim=320, codebook_size=32, seed=3)
    compute = random_projection_labels(encoder, quantizer)
    manifest = read_manifest(manifest_path)
    wave = load_audio(manifest.audio_path(0), sample_rate=16000)
    labels = compute(wave[None], torch.tensor([wave.shape[1]]))[0]
    feats, _ = encoder.features(wave[None], torch.tensor([wave.shape[1]]))
    with torch.no_grad():
        frames = encoder(wave[None], torch.tensor([wave.shape[1]])).hidden.shape[1]
    assert len(labels) == frames  # one label per encoder frame
    assert np.array_equal(labels, quantizer(stack_frames(feats, 4))[0, :, 0].numpy())

    def one_label(audio, lens):
        return [np.zeros(-(-int(n) // 640), dtype=np.int16) for n in lens]

    scores = alignment_quality(manifest_path, one_label, 25.0, 16000)
    reference = torch.cat(
        [
            digit_alignment(
                row["segments"],
                -(-load_audio(manifest.audio_path(i), sample_rate=16000).shape[1] // 640),
                25.0,
            )
            for i, row in enumerate(manifest.rows)
        ]
    )
    # a single label explains nothing; it is "right" on the most frequent reference label only
    assert scores["pnmi"] == 0.0
    assert scores["cluster_purity"] == pytest.approx(reference.bincount().max().item() / len(reference))
    assert alignment_quality(manifest_path, compute, 25.0, 16000)["pnmi"] > 0


def test_kmeans_labels_round_trip_through_the_manifest(tiny_data_dir, tmp_path):
    from datamodules.audio_datamodule import AudioDataModule

    digits = tiny_data_dir / "connected_digits"
    encoder = tiny_encoder().eval()
    manifests = [digits / "train.jsonl", digits / "val.jsonl"]
    centroids = fit_kmeans(encoder, manifests, layer=1, k=6, utterances=10, iters=3)
    assert centroids.shape == (6, 32)
    written = write_labels(encoder, manifests, 1, centroids, tmp_path / "labels", batch_size=4)
    labelled = read_manifest(written[str(digits / "val.jsonl")])
    row = labelled.rows[0]
    labels = np.load(labelled.resolve(row["kmeans_labels"]))
    assert row["kmeans_labels_rate"] == 25.0 and labels.dtype == np.int16 and labels.max() < 6
    wave = load_audio(labelled.audio_path(0), sample_rate=16000)
    with torch.no_grad():
        out = encoder(wave[None], torch.tensor([wave.shape[1]]), output_layers=True)
    # the batched dump pads: only the last frame (whose STFT window reaches the padding) may differ
    assert np.array_equal(labels[:-1], nearest_codes(out.layers[1][0], centroids).numpy()[:-1])
    data = AudioDataModule(
        view="crops",
        crop_seconds=1.0,
        train_manifest=str(written[str(digits / "train.jsonl")]),
        val_manifest=str(written[str(digits / "val.jsonl")]),
        array_fields=["kmeans_labels"],
        batch_size=4,
        num_workers=0,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["kmeans_labels"].shape[1] == 25 and (batch["kmeans_labels_lens"] <= 25).all()
    # resumed: nothing rewritten
    again = dump_per_utterance(
        digits / "val.jsonl",
        column="kmeans_labels",
        compute=None,
        rate=25.0,
        sample_rate=16000,
        out_dir=tmp_path / "labels" / "connected_digits" / "kmeans_labels",
        out_manifest=tmp_path / "again.jsonl",
    )
    assert again.written == 0 and again.reused == len(labelled)


def test_tiny_pretraining_run_logs_metrics_and_its_encoder_loads_from_disk(
    tiny_data_dir, mlflow_store, tmp_path
):
    from experiments.core import tracking
    from experiments.core.runner import train
    from tests.conftest import MIRROR, TINY_COUNTS

    overrides = [
        "experiment=ssl/luise_iter1",
        "model/encoder=tiny",
        "model.quantizer.codebook_size=64",
        f"paths.data_dir={tiny_data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.mirror_dir={MIRROR}",
        f"data.preparers.connected_digits.counts={TINY_COUNTS}",
        "data.train_manifest=[${paths.data_dir}/connected_digits/train.jsonl]",
        "data.crop_seconds=1.0",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    train(compose_config(overrides))
    client = tracking.client()
    run = client.search_runs(client.search_experiments()[0].experiment_id)[0]
    for name in ("train/loss", "train/accuracy", "train/label_perplexity", "val/loss", "val/accuracy"):
        assert name in run.data.metrics, name
    assert 1 <= run.data.metrics["train/label_perplexity"] <= 64
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    encoder = load_submodule("encoder", ckpt_path=str(ckpt))
    assert isinstance(encoder, ConformerEncoder) and encoder.num_layers == 2 and not encoder.training
    saved = load_checkpoint(ckpt)["state_dict"]
    assert torch.equal(
        encoder.state_dict()["subsampling.proj.weight"], saved["encoder.subsampling.proj.weight"]
    )
    by_run = load_submodule("encoder", run_id=run.info.run_id)
    assert torch.equal(
        by_run.state_dict()["subsampling.proj.weight"], saved["encoder.subsampling.proj.weight"]
    )


def test_pipeline_links_its_stages_and_skips_finished_ones(tiny_data_dir, mlflow_store, tmp_path, capsys):
    from experiments.core import tracking
    from experiments.pipeline import main as run_pipeline
    from tests.conftest import MIRROR, TINY_COUNTS

    def pipeline(args: list[str]) -> int:
        return run_pipeline(["luise", *args])

    digits = tiny_data_dir / "connected_digits"
    common = [
        "model/encoder=tiny",
        f"paths.mirror_dir={MIRROR}",
        f"data.preparers.connected_digits.counts={TINY_COUNTS}",
        "~data.preparers.librispeech",
        "data.crop_seconds=1.0",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    args = [
        "--out", str(tmp_path / "pipeline"), "--data-dir", str(tiny_data_dir), "--k", "4",
        "--probe-steps", "2", "--probe-train-limit", "8", "--probe-clusters", "4",
        "--label-manifests", str(digits / "train.jsonl"), str(digits / "val.jsonl"),
        "--common", *common,
        "--iter1", "model.quantizer.codebook_size=64", "data.train_manifest=[${paths.data_dir}/connected_digits/train.jsonl]",
        "--iter2", "data.train_manifest=[${labels_dir}/connected_digits/train_kmeans_labels.jsonl]",
    ]  # fmt: skip
    assert pipeline(args) == 0
    client = tracking.client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("voxlab.role") == "pipeline")
    children = {
        r.data.tags.get("voxlab.pipeline_stage"): r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"iter1", "probe1", "labels", "iter2", "probe2"}
    assert all(child.info.status == "FINISHED" for child in children.values())
    assert "probe/wer" in children["probe1"].data.metrics and "val/accuracy" in children["iter2"].data.metrics
    stages = json.loads((tmp_path / "pipeline" / "stages" / "probe1.json").read_text())
    assert len(stages["rows"]) == 3  # input + 2 layers of the tiny encoder
    labels = json.loads((tmp_path / "pipeline" / "stages" / "labels.json").read_text())
    assert torch.load(labels["centroids"], weights_only=True).shape[0] == 4
    capsys.readouterr()
    assert pipeline(args) == 0  # finished stages are skipped
    assert capsys.readouterr().out.count("skipped") == 5
    # new labels, iteration 2 now from iteration 1: only labels and what reads them rerun
    assert pipeline([*args, "--k", "5", "--iter2-init-from-iter1"]) == 0
    out = capsys.readouterr().out
    assert "[iter1] done already" in out and "[labels] running" in out and "[iter2] running" in out
    # the resumable dump must not keep the k=4 labels: each setting labels into its own folder
    relabelled = json.loads((tmp_path / "pipeline" / "stages" / "labels.json").read_text())
    assert relabelled["labels_dir"] != labels["labels_dir"]
    train_labels = read_manifest(relabelled["manifests"][str(digits / "train.jsonl")])
    new_dir = Path(relabelled["labels_dir"]).resolve()
    assert all(new_dir in train_labels.resolve(r["kmeans_labels"]).parents for r in train_labels.rows)
    # SFT (its experiment config) rebuilds iteration 2's encoder, itself built by the loader from iteration 1,
    # with SpecAugment on and in train mode (Lightning leaves a loaded eval-mode part without dropout/SpecAugment)
    iter2 = json.loads((tmp_path / "pipeline" / "stages" / "iter2.json").read_text())
    cfg = compose_config(["experiment=ssl/luise_sft", f"model.net.encoder.ckpt_path={iter2['ckpt']}"])
    sft = instantiate(cfg.model)
    encoder = sft.net.encoder
    assert isinstance(encoder.spec_augment, SpecAugment) and encoder.spec_augment.training
    check_training_modes(sft)
    state = load_checkpoint(iter2["ckpt"])["state_dict"]
    assert torch.equal(encoder.subsampling.proj.weight, state["encoder.subsampling.proj.weight"])
