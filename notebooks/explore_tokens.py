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
# # Explore speech tokens
# Encode connected-digit utterances with a trained SpeechTokenizer, look at the codes per level and codebook
# usage, listen to resynthesis from the first k levels and to voice conversion (RVQ-1 of one speaker with
# RVQ-2..n of another), and line RVQ-1 tokens up with the spoken digits. Logic lives in `experiments.core.tokens`.
# The tokenizer is `VOXLAB_TOKENIZER_CKPT`, else `VOXLAB_TOKENIZER_RUN`, else the newest tokenizer run in MLflow
# (`python -m experiments.train experiment=tokenizer/cpu model.teacher.run_id=<CTC run>` makes one).

# %%
# %matplotlib inline
import os

from IPython.display import Audio, display

from experiments.core import tokens
from experiments.core.tokens import load_codec
from experiments.core.tracking import ROOT

CKPT = os.environ.get("VOXLAB_TOKENIZER_CKPT")
RUN_ID = None if CKPT else os.environ.get("VOXLAB_TOKENIZER_RUN") or tokens.latest_tokenizer_run()
MANIFEST = os.environ.get("VOXLAB_DIGITS_MANIFEST", str(ROOT / "data" / "connected_digits" / "test.jsonl"))
codec = load_codec(ckpt=CKPT, run_id=RUN_ID)
print(
    f"tokenizer: {CKPT or RUN_ID}; {codec.n_q} levels {codec.quantizer.codebook_sizes} at {codec.frame_rate:g} Hz = {codec.bitrate:.0f} bit/s"
)

# %% [markdown]
# ## Codes of one utterance, level by level

# %%
first, second = tokens.pick_utterances(MANIFEST, 2)
wave, codes = tokens.encode_utterance(codec, first)
print(f"{first['id']} ({first['speaker']}): '{first['text']}' -> codes {tuple(codes.shape)}")
figure = tokens.code_heatmap(codes, codec.frame_rate, title=f"{first['id']}: {first['text']}")

# %% [markdown]
# ## Codebook usage over a few utterances

# %%
sample = [tokens.encode_utterance(codec, row)[1] for row in tokens.pick_utterances(MANIFEST, 8)]
usage = tokens.codebook_usage(codec, sample)
figure = tokens.usage_figure(usage, codec.quantizer.codebook_sizes)
{name: round(value, 2) for name, value in usage.items() if name.endswith("perplexity")}

# %% [markdown]
# ## Resynthesis from the first k levels
# RVQ-1 alone should keep the words and lose much of the voice; more levels bring the speaker back.

# %%
display(Audio(wave[0, 0].numpy(), rate=codec.sample_rate))
for k, audio in tokens.resynthesis_by_levels(codec, wave).items():
    print(f"first {k} level(s)")
    display(Audio(audio, rate=codec.sample_rate))

# %% [markdown]
# ## Voice conversion: content (RVQ-1) of one speaker, RVQ-2..n of another

# %%
other_wave, _ = tokens.encode_utterance(codec, second)
converted = codec.convert_voice(wave, other_wave)[0, 0].numpy()
print(f"content: {first['speaker']} '{first['text']}'; voice: {second['speaker']}")
display(Audio(other_wave[0, 0].numpy(), rate=codec.sample_rate))
display(Audio(converted, rate=codec.sample_rate))

# %% [markdown]
# ## RVQ-1 tokens against the spoken digits

# %%
figure = tokens.rvq1_alignment_figure(codes, first["segments"], codec.frame_rate, title=first["text"])
for word, top_codes in tokens.segment_code_overlap(codes, first["segments"], codec.frame_rate):
    print(f"{word:>6}: most frequent RVQ-1 codes {top_codes}")
