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
# # LUISE layer by layer
# Reads a LUISE pipeline folder (`python -m experiments.pipeline luise --out DIR`, or the `speech_llm` pipeline's;
# `VOXLAB_LUISE_DIR`, default `runs/luise`) and the connected-digit test set under `VOXLAB_DATA` (default
# `data/`). Which layer holds the content, how pure each iteration's targets are, and one utterance frame by
# frame. The logic lives in `experiments.core.ssl_view`.

# %%
# %matplotlib inline
import os
from pathlib import Path

from IPython.display import Audio, display

from datamodules.manifest import read_manifest
from experiments.core import ssl_view
from experiments.core.cli import data_dir
from experiments.core.tracking import ROOT

os.chdir(ROOT)  # stage records hold paths relative to the repository root, where pipelines run
LUISE_DIR = Path(os.environ.get("VOXLAB_LUISE_DIR", ROOT / "runs" / "luise"))
TEST = data_dir() / "connected_digits" / "test.jsonl"

# %% [markdown]
# Per layer and iteration: WER/CER of a CTC probe (a small BiLSTM trained on each frozen layer) and the purity /
# PNMI of a k-means of the layer's frames against the digit alignment. Iteration 2's k-means labels come from
# iteration 1's layer with the highest PNMI.

# %%
probes = ssl_view.probe_table(LUISE_DIR)
display(probes.round(3))
figure = ssl_view.plot_probes(probes)

# %% [markdown]
# The targets of each iteration against the digit alignment (first 100 test utterances): iteration 1 predicts a
# random projection of the log-mel, iteration 2 the k-means clusters of iteration 1's layer.

# %%
ssl_view.label_purity(LUISE_DIR, TEST, limit=100).round(3)

# %% [markdown]
# One utterance: its log-mel, both iterations' targets and where each digit was spoken.

# %%
test_set = read_manifest(TEST)
display(Audio(filename=str(test_set.audio_path(0))))
figure = ssl_view.frame_view(LUISE_DIR, TEST, index=0)
