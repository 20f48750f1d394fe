"""Context SFT and the MWER stage through experiments.train on tiny parts, both started from a tiny AcLLM run:
weights carried over, contexts in the batches, keyword recall and the MWER statistics logged, and checkpoints that
reload without the run they started from. The MWER scoring is checked against teacher forcing item by item."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from experiments.core.checkpoints import load_checkpoint, load_module
from experiments.core.runner import train
from research.acllm.speech_llm import Hypothesis


def later_stage(tiny_data_dir, output_dir, upstream_ckpt, experiment: str, *extra: str) -> list[str]:
    from tests.conftest import tiny_overrides

    overrides = [
        o for o in tiny_overrides(tiny_data_dir, output_dir) if not o.startswith(("model.", "experiment="))
    ]
    return [
        f"experiment={experiment}",
        *overrides,
        f"init.ckpt_path={upstream_ckpt}",
        "model.lora.rank=4",
        "model.scheduler.warmup_steps=2",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "test=false",
        *extra,
    ]


def test_a_stage_with_other_lora_settings_than_its_upstream_is_refused(
    tiny_data_dir, tiny_acllm_checkpoint, tmp_path, compose_config
):
    from hydra.utils import instantiate

    overrides = later_stage(tiny_data_dir, tmp_path, tiny_acllm_checkpoint, "acllm/digits_context")
    with pytest.raises(Exception, match="trained with lora="):  # alpha 8 would load and rescale the adapters
        instantiate(compose_config([*overrides, "model.lora.alpha=8"]).model)


def test_context_sft_starts_from_the_sft_weights_and_logs_keyword_recall(
    tiny_data_dir, tiny_acllm_checkpoint, tmp_path, mlflow_store, compose_config
):
    from hydra.utils import instantiate

    cfg = compose_config(
        later_stage(tiny_data_dir, tmp_path / "ctx", tiny_acllm_checkpoint, "acllm/digits_context")
    )
    module = instantiate(cfg.model)
    upstream = load_checkpoint(tiny_acllm_checkpoint)["state_dict"]
    state = module.state_dict()
    assert all(
        torch.equal(state[name], value) for name, value in upstream.items()
    )  # LoRA, converter, encoder
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert len(batch["context"]) == len(batch["text"]) and any(batch["context"])
    metrics = train(cfg)
    assert {"train/loss", "val/wer", "val/keyword_recall"} <= set(metrics)
    assert 0 <= metrics["val/keyword_recall"] <= 1


def test_mwer_scores_each_hypothesis_as_teacher_forcing_does(
    tiny_data_dir, tiny_acllm_checkpoint, tmp_path, compose_config
):
    from hydra.utils import instantiate

    cfg = compose_config(
        later_stage(tiny_data_dir, tmp_path, tiny_acllm_checkpoint, "rl/mwer_digits", "model.nbest=3")
    )
    module = instantiate(cfg.model)
    model = module.model.eval()
    audio = torch.randn(2, 1, 12000) * 0.1
    lens = torch.tensor([12000, 9000])
    batch = {"audio": audio, "audio_lens": lens, "text": ["one two", "nine"], "context": ["two", ""]}
    items = module.usable_items(batch)
    ids = lambda text: model.token_ids(text)  # noqa: E731
    hypotheses = [
        # only 2 of 3; "one" was cut by the length bound (no EOS generated, none scored)
        [Hypothesis("one two", -1.0, ids("one two"), True), Hypothesis("one", -2.0, ids("one"), False)],
        [
            Hypothesis("nine", -1.0, ids("nine"), True),
            Hypothesis("five", -2.0, ids("five"), True),
            Hypothesis("", -3.0, [], True),
        ],
    ]
    logprobs, valid, reference_ce = module.score(items, hypotheses)
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    eos = model.tokenizer.eos_token_id
    for item, item_hypotheses in enumerate(hypotheses):
        for rank, hypothesis in enumerate(item_hypotheses):
            alone, _ = model.sequence_logprobs(
                items.speech[item : item + 1],
                items.speech_lens[item : item + 1],
                [[*hypothesis.ids, eos] if hypothesis.ended else hypothesis.ids],
                [batch["context"][item]],
            )
            torch.testing.assert_close(logprobs[item, rank], alone[0], atol=1e-5, rtol=1e-5)
    expected_ce = model.loss(items.speech, items.speech_lens, items.targets, items.contexts)
    torch.testing.assert_close(reference_ce, expected_ce, atol=1e-5, rtol=1e-5)
    errors = module.errors(hypotheses, [["one", "two"], ["nine"]], [["two"], []], 3.0)
    assert errors.tolist() == [[0, 3, 0], [0, 1, 1]]  # "one" for "one two" drops the keyword "two": weight 3


def test_mwer_stage_trains_logs_its_statistics_and_reloads_without_its_upstream(
    tiny_data_dir, tiny_acllm_checkpoint, tmp_path, mlflow_store, compose_config
):
    upstream = tmp_path / "upstream.ckpt"
    shutil.copy(tiny_acllm_checkpoint, upstream)
    metrics = train(compose_config(later_stage(tiny_data_dir, tmp_path / "mwer", upstream, "rl/mwer_digits")))
    logged = {
        "train/loss",
        "train/mwer_risk",
        "train/expected_wer",
        "train/nbest_wer_best",
        "train/nbest_wer_mean",
        "train/nbest_wer_top",
        "val/wer",
    }
    assert logged <= set(metrics)
    assert metrics["train/expected_wer"] >= 0 and metrics["train/nbest_size"] >= 2
    ckpt = tmp_path / "mwer" / "checkpoints" / "last.ckpt"
    stored = load_checkpoint(ckpt)["voxlab_config"]["model"]
    assert stored["init_checkpoint"] is None and stored["model"]["_target_"].endswith("SpeechLLM")
    upstream.unlink()  # the MWER checkpoint stands alone
    reloaded = load_module(ckpt)
    assert type(reloaded).__name__ == "MWERModule" and reloaded.hparams.nbest == 4
    hyper_parameters = load_checkpoint(ckpt)["hyper_parameters"]
    assert "init_checkpoint" not in hyper_parameters  # no copy of the upstream weights in the checkpoint
    trained = load_checkpoint(ckpt)["state_dict"]
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in trained.items())


def test_transcribe_with_a_context_column_reports_keyword_recall_and_alpha_zero_is_context_free(
    tiny_data_dir, tiny_acllm_checkpoint, tmp_path
):
    from datamodules.manifest import read_manifest, write_manifest
    from experiments import transcribe
    from experiments.core.transcripts import transcribe_manifest

    source = read_manifest(tiny_data_dir / "connected_digits" / "val.jsonl")
    rows = [
        {
            **row,
            "audio_filepath": str(source.audio_path(i)),
            "context": f"{row['text'].split()[0]}, eight eight",
        }
        for i, row in enumerate(source.rows[:4])
    ]
    manifest = tmp_path / "in.jsonl"
    write_manifest(manifest, rows)
    common = [
        "--ckpt",
        str(tiny_acllm_checkpoint),
        "--manifest",
        str(manifest),
        "--context-column",
        "context",
    ]
    assert transcribe.main([*common, "--out", str(tmp_path / "joint.jsonl"), "--context-weight", "1.0"]) == 0
    assert all("hyp" in row for row in read_manifest(tmp_path / "joint.jsonl").rows)
    model = load_module(tiny_acllm_checkpoint).model
    free = transcribe_manifest(model, manifest, tmp_path / "free.jsonl")
    alpha_zero = transcribe_manifest(
        model, manifest, tmp_path / "zero.jsonl", context_column="context", context_weight=0.0
    )
    assert [r["hyp"] for r in read_manifest(free.out).rows] == [
        r["hyp"] for r in read_manifest(alpha_zero.out).rows
    ]
    assert free.keyword_recall is None and 0 <= alpha_zero.keyword_recall <= 1  # keywords: context words said
    with pytest.raises(SystemExit):
        transcribe.main(["--ckpt", "x", "--manifest", "m", "--out", "o", "--context-weight", "1"])


def test_the_benchmarks_expected_wer_weights_each_hypothesis_by_its_renormalised_posterior():
    from experiments.benchmarks.rl.mwer_evidence import expected_wer

    rows = [
        {
            "text": "one two",
            "nbest": [{"text": "one two", "score": 0.0}, {"text": "one", "score": -math.log(3)}],
        },
        {"text": "nine", "nbest": [{"text": "five", "score": -1.0}]},
    ]
    # row 1: p = (3/4, 1/4), WERs (0, 1/2) -> 1/8; row 2: one hypothesis, WER 1
    assert expected_wer(rows) == pytest.approx((1 / 8 + 1) / 2)
