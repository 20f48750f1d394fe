import math

import pytest
import torch

from research.tokenizer.codec import BiLSTMSEANetEncoder, SpeechTokenizerCodec
from research.tokenizer.discriminators import CodecDiscriminator
from research.tokenizer.losses import (
    MultiScaleMelLoss,
    feature_matching_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)


def tiny_codec(**kwargs) -> SpeechTokenizerCodec:
    defaults = dict(
        n_filters=4, dimension=32, codebook_sizes=(32,) * 4, semantic_dim=16, quantizer={"kmeans_iters": 2}
    )
    return SpeechTokenizerCodec(**{**defaults, **kwargs})


def test_codes_are_50hz_for_hop_320_and_shapes_hold():
    codec = tiny_codec()
    audio = torch.randn(2, 1, 16000 + 100) * 0.1  # not a multiple of the hop: padded, then trimmed
    out = codec(audio)
    assert codec.hop_length == 320 and codec.frame_rate == 50.0
    assert out.codes.shape == (4, 2, 51)
    assert out.audio.shape == audio.shape
    assert out.semantic.shape == (2, 51, 16)
    codec.eval()
    codes = codec.encode(audio)
    assert codes.shape == (4, 2, 51)
    assert codec.decode(codes[:1]).shape == (2, 1, 51 * 320)


def test_bitrate_uses_per_level_codebook_sizes():
    assert tiny_codec().bitrate == 50 * 4 * 5
    baichuan = tiny_codec(codebook_sizes=(8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024))
    assert baichuan.bitrate == 50 * (13 + 12 + 11 + 10 * 5)


def test_encoder_lstm_is_bidirectional():
    encoder = BiLSTMSEANetEncoder(n_filters=4, dimension=8, ratios=[2, 2])
    lstm = next(m for m in encoder.modules() if isinstance(m, torch.nn.LSTM))
    assert lstm.bidirectional and lstm.num_layers == 2
    # bidirectional: a change at the end of the input changes the encoding of the first frame
    x = torch.randn(1, 1, 64)
    y = x.clone()
    y[..., -8:] += 1.0
    assert not torch.allclose(encoder(x)[..., 0], encoder(y)[..., 0])


@pytest.mark.parametrize("zero_bias_init", [True, False])
def test_initial_decoder_output_depends_on_its_input_only_with_zero_biases(zero_bias_init):
    torch.manual_seed(0)
    codec = tiny_codec(n_filters=8, zero_bias_init=zero_bias_init)
    with torch.no_grad():
        a, b = codec.decoder(torch.randn(1, 32, 50)), codec.decoder(torch.randn(1, 32, 50))
    relative_change = float((a - b).abs().mean() / a.abs().mean())
    # default init: the output is a bias constant (a DC offset, measured 0.6% change), so a small codec stalls
    assert (relative_change > 0.5) if zero_bias_init else (relative_change < 0.05)


def test_split_rvq_codec_runs():
    out = tiny_codec(split_rvq=True)(torch.randn(1, 1, 3200) * 0.1)
    assert out.codes.shape == (4, 1, 10)


def test_mel_loss_by_hand_on_a_gain_change():
    loss = MultiScaleMelLoss(weights=(45.0, 1.0, 1.0, 1.0))
    audio = torch.randn(1, 1, 8000) * 0.3
    assert loss(audio, audio) == 0
    # halving the amplitude shifts every log-mel bin by log 2 (except the floor-clamped empty filters)
    assert loss(audio * 0.5, audio) == pytest.approx(48 * math.log(2), rel=0.05)


def test_discriminators_and_gan_losses():
    disc = CodecDiscriminator(periods=(2, 3), msd_rates=(1,), stft_filters=4, stft_n_ffts=(256, 128))
    real = disc(torch.randn(2, 1, 4000) * 0.1)
    assert len(real) == 2 + 1 + 2
    fake = [[f.detach().clone() for f in maps] for maps in real]
    assert feature_matching_loss(real, fake) == 0
    ones = [[torch.ones(3)] for _ in range(2)]
    zeros = [[torch.zeros(3)] for _ in range(2)]
    assert lsgan_discriminator_loss(ones, zeros) == 0  # perfect discriminator
    assert lsgan_generator_loss(zeros) == 2  # each discriminator: mean((1 - 0)^2)


def test_generator_loss_falls_over_a_few_steps():
    torch.manual_seed(0)
    codec = tiny_codec()
    mel = MultiScaleMelLoss()
    audio = torch.sin(torch.linspace(0, 400, 3200))[None, None] * 0.5
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = codec(audio)
        loss = mel(out.audio, audio) + 10 * out.commitment_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0]
