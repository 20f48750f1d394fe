import numpy as np
import pytest
import soundfile as sf
import torch

from research.audio import BadAudioError, load_audio, write_audio
from tests.conftest import sine


def test_resamples_8k_to_16k(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(0.5, 8000), 8000)
    wave = load_audio(path, sample_rate=16000)
    assert wave.shape == (1, 8000)
    spectrum = torch.fft.rfft(wave[0]).abs()
    assert abs(int(spectrum.argmax()) * 16000 / 8000 - 440) < 3  # the tone survives resampling


def test_stereo_is_downmixed_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left_right = np.stack([np.full(800, 0.2, np.float32), np.full(800, 0.6, np.float32)], axis=1)
    sf.write(path, left_right, 16000, subtype="FLOAT")
    wave = load_audio(path, sample_rate=16000)
    assert wave.shape == (1, 800)
    assert torch.allclose(wave, torch.full((1, 800), 0.4), atol=1e-6)


def test_stereo_without_downmix_is_bad(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, sine(0.1, 16000, channels=2), 16000)
    with pytest.raises(BadAudioError, match="2 channels"):
        load_audio(path, sample_rate=16000, downmix=False)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "zero-length"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00not really a wav file"), "unreadable"),
        (lambda p: sf.write(p, np.full(100, np.nan, np.float32), 16000, subtype="FLOAT"), "non-finite"),
        (lambda p: None, "file not found"),
    ],
    ids=["zero-length", "corrupt", "nan", "missing"],
)
def test_bad_audio_raises_with_path_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(BadAudioError, match=reason) as error:
        load_audio(path, sample_rate=16000)
    assert str(path) in str(error.value)


def test_write_then_read_round_trip(tmp_path):
    wave = torch.linspace(-0.5, 0.5, 1600)[None]
    path = write_audio(tmp_path / "sub" / "x.wav", wave, 16000)
    assert torch.allclose(load_audio(path, sample_rate=16000), wave, atol=1e-4)
