# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # CRPO: listen across iterations, rewards and judges
# Reads a CRPO pipeline folder (`python -m experiments.pipeline crpo --out DIR`; `VOXLAB_CRPO_DIR`, default
# `runs/crpo`) and, when given, the evidence benchmark's judged results (`VOXLAB_CRPO_EVIDENCE`, e.g.
# `runs/benchmarks/crpo_evidence/evidence.json`). The logic lives in `experiments.core.crpo_view`.

# %%
# %matplotlib inline
import os
from pathlib import Path

from IPython.display import Audio, display

from experiments.core import crpo_view
from experiments.core.tracking import ROOT

os.chdir(ROOT)  # stage records hold paths relative to the repository root, where pipelines run
CRPO_DIR = Path(os.environ.get("VOXLAB_CRPO_DIR", ROOT / "runs" / "crpo"))
EVIDENCE = os.environ.get(
    "VOXLAB_CRPO_EVIDENCE", ROOT / "runs" / "benchmarks" / "crpo_evidence" / "evidence.json"
)

# %% [markdown]
# Per iteration: the candidates' rewards, the chosen − rejected margin, ties and NaN rewards left out, and the
# training's final winner / loser flow-matching errors.

# %%
crpo_view.iteration_stats(CRPO_DIR)

# %%
scores = crpo_view.candidate_scores(CRPO_DIR)
figure = crpo_view.plot_rewards(scores)

# %% [markdown]
# The same caption across iterations: each iteration's chosen sample (different seeds per iteration).

# %%
caption = scores.caption.iloc[0]
print(caption)
for k in crpo_view.iterations(CRPO_DIR):
    pair = next(p for p in crpo_view.pairs(CRPO_DIR, k) if p["caption"] == caption)
    print(f"iteration {k}: chosen, reward {pair['chosen_score']:.3f}")
    display(Audio(filename=str(pair["chosen"])))

# %% [markdown]
# Chosen against rejected, iteration 1.

# %%
for pair in crpo_view.pairs(CRPO_DIR, 1)[:3]:
    print(f"{pair['caption']}: chosen {pair['chosen_score']:.3f}, rejected {pair['rejected_score']:.3f}")
    display(Audio(filename=str(pair["chosen"])), Audio(filename=str(pair["rejected"])))

# %% [markdown]
# Judges that are not the reward (digit accuracy of a recognizer trained apart, prompted-speaker accuracy,
# Fréchet distance to real clips) per arm and iteration, from the evidence benchmark.

# %%
if Path(EVIDENCE).is_file():
    table = crpo_view.judged(EVIDENCE)
    judges = ("reward", "digit_accuracy", "speaker_accuracy", "frechet")
    figure = crpo_view.plot_judges(table, judges)
    display(table.groupby(["set", "arm", "iteration"])[list(judges)].mean().round(3))
else:
    print(f"no judged results at {EVIDENCE}: python -m experiments.benchmarks.t2a.crpo_evidence")
