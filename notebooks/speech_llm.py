# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
# ---

# %% [markdown]
# # The LLM recognizer, stage by stage
# Reads a speech_llm pipeline folder (`python -m experiments.pipeline speech_llm --out DIR`;
# `VOXLAB_SPEECH_LLM_DIR`, default `runs/speech_llm`), its runs in MLflow (`MLFLOW_TRACKING_URI` or the
# repository's `mlflow.db`) and the connected-digit test set under `VOXLAB_DATA` (default `data/`). The logic
# lives in `experiments.core.speech_llm_view`.

# %%
# %matplotlib inline
import os
from pathlib import Path

from IPython.display import Audio, display

from experiments.core import speech_llm_view as view
from experiments.core.cli import data_dir
from experiments.core.tracking import ROOT

os.chdir(ROOT)  # stage records hold paths relative to the repository root, where pipelines run
PIPELINE_DIR = Path(os.environ.get("VOXLAB_SPEECH_LLM_DIR", ROOT / "runs" / "speech_llm"))
ROWS = view.manifest_rows(data_dir() / "connected_digits" / "test.jsonl")

# %% [markdown]
# The pipeline's stages on the same test sets (seen speakers; `test_heldout`: a speaker never trained on), read
# from its MLflow run, and the wall time of every stage.

# %%
metrics, wall = view.pipeline_comparison(PIPELINE_DIR)
display(metrics.round(3), wall)
axis = (
    metrics.pivot(index="stage", columns="test set", values="wer")
    .loc[metrics.stage.unique()]
    .plot.bar(title="WER per stage", rot=0)
)

# %% [markdown]
# Transcribe with the last stage (MWER), greedy.

# %%
model, sample_rate = view.recognizer(PIPELINE_DIR, "mwer")
for row in view.transcribe_rows(model, sample_rate, ROWS[:2]):
    print(f"reference: {row['text']}\nhypothesis: {row['hyp']}")
    display(Audio(filename=row["audio_filepath"]))

# %% [markdown]
# N-best lists of beam search (4 beams): sequence log-probabilities (EOS included) and each hypothesis' WER,
# the quantities MWER trains on.

# %%
view.nbest_table(model, sample_rate, ROWS[:2], beams=4).round(3)

# %% [markdown]
# The effect of a context on the context-SFT model: no context, a run of the spoken digits among distractors
# (keyword), distractors only, and the true run alone (oracle); the prompt alone, then the joint search
# (alpha 1, top-5 pruning), which weighs in the context-free prediction.

# %%
context_model, _ = view.recognizer(PIPELINE_DIR, "context_sft")
prompt_only = view.context_effect(context_model, sample_rate, ROWS, count=4)
joint = view.context_effect(context_model, sample_rate, ROWS, count=4, context_weight=1.0)
display(prompt_only[["utterance", "context kind", "context", "reference", "hypothesis", "wer"]])
summary = {"prompt": prompt_only, "joint search": joint}
display(
    {
        name: t.groupby("context kind")[["wer", "keyword recall"]].mean().round(3)
        for name, t in summary.items()
    }
)

# %% [markdown]
# What trains in the AcLLM: every finished AcLLM run in MLflow by experiment and recipe (converter only, the
# encoder and converter, LoRA, full fine-tuning); `python -m experiments.benchmarks.acllm.evidence` makes the
# comparison on spoken sentences.

# %%
view.recipe_comparison().round(3)
