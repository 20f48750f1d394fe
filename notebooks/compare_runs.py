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
# # Compare runs of an experiment
# Lists the MLflow runs of one experiment, plots a metric against a swept parameter, picks the best run and
# shows its artifacts. The logic lives in `experiments.core.compare`; runs come from `MLFLOW_TRACKING_URI` or the
# repository's `mlflow.db`. Make some with a sweep, e.g.
# `python -m experiments.train -m experiment=asr/ctc_digits model.optimizer.lr=1e-3,3e-3`.

# %%
# %matplotlib inline
import os

from IPython.display import Audio, Image, display

from experiments.core import compare

EXPERIMENT = os.environ.get("VOXLAB_EXPERIMENT", "asr_ctc_digits")
METRIC = os.environ.get("VOXLAB_METRIC", "val/wer")
PARAM = os.environ.get("VOXLAB_PARAM", "model/optimizer/lr")

# %%
runs = compare.list_runs(EXPERIMENT)
columns = ["run_id", "tags.mlflow.runName", "tags.voxlab.sweep_id", f"params.{PARAM}", f"metrics.{METRIC}"]
runs[[c for c in columns if c in runs]]

# %%
figure = compare.plot_metric_vs_param(runs, metric=METRIC, param=PARAM)
compare.metric_vs_param(runs, metric=METRIC, param=PARAM)

# %%
best = compare.best_run(runs, metric=METRIC)
print(
    f"best run {best.run_id}: {METRIC} = {best[f'metrics.{METRIC}']:.3f} at {PARAM} = {best[f'params.{PARAM}']}"
)

# %% [markdown]
# The best run's last logged audio clip and figure.

# %%
clips = compare.fetch_artifacts(best.run_id, "audio", suffix=".wav")
figures = compare.fetch_artifacts(best.run_id, "figures", suffix=".png")
if clips:
    display(Audio(filename=str(clips[-1])))
if figures:
    display(Image(filename=str(figures[-1])))
print(f"{len(clips)} audio clips, {len(figures)} figures")
