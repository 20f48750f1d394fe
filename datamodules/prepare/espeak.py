"""espeak-ng speech synthesis through ctypes on the library bundled by the `espeakng-loader` wheel.

A voice is a language voice (`en-us`, `en-gb-scotland`, ...) optionally followed by `+variant` (`m1`..`m7`,
`f1`..`f5`, ...). espeak-ng keeps process-wide state between syntheses (its pitch-flutter phase, for one), so the
same call would sound slightly different depending on what was spoken before it; each call therefore loads the
library afresh and unloads it afterwards (a few milliseconds). The breathy variants draw random noise, seeded per
call. So a sentence's audio is a function of its inputs.
"""

from __future__ import annotations

import _ctypes
import ctypes
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
POS_CHARACTER, ESPEAK_CHARS_UTF8 = 1, 1
EE_OK = 0
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def library_paths() -> tuple[Path, Path]:
    """(libespeak-ng.so, espeak-ng-data) of the espeakng-loader wheel."""
    try:
        import espeakng_loader
    except ImportError as error:
        raise RuntimeError("espeak-ng is missing: install the locked `espeakng-loader` package") from error
    return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())


class _Session:
    """One freshly loaded and initialised library; `close` terminates and unloads it."""

    def __init__(self, library: Path, data: Path) -> None:
        try:
            self.lib = ctypes.CDLL(str(library))
        except OSError as error:
            raise RuntimeError(f"cannot load the espeak-ng library {library}: {error}") from error
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), 0)
        if self.sample_rate <= 0:
            self.close()
            raise RuntimeError(f"espeak-ng failed to initialise with its data in {data}")
        self.chunks: list[np.ndarray] = []
        # the library keeps only a raw pointer to the callback: hold the object for the session's life
        self.callback = SYNTH_CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, count: int, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = go on synthesising

    def close(self) -> None:
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)  # the next load starts from the library's initial state


class Espeak:
    def __init__(self) -> None:
        self.library, self.data = library_paths()
        session = self._open()  # fail early when the library cannot load
        self.sample_rate = session.sample_rate
        session.close()

    def _open(self) -> _Session:
        return _Session(self.library, self.data)

    def _select_voice(self, session: _Session, voice: str) -> None:
        language, _, variant = voice.partition("+")
        # the library silently ignores an unknown variant, so look for its file
        if variant and not (self.data / "voices" / "!v" / variant).is_file():
            raise ValueError(f"unknown espeak-ng voice variant '{variant}' in '{voice}'")
        if session.lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
            raise ValueError(f"unknown espeak-ng voice '{language}' in '{voice}'")

    def check_voices(self, voices: list[str]) -> None:
        """Raise ValueError naming the language or variant of a voice that espeak-ng does not know."""
        session = self._open()
        try:
            for voice in voices:
                self._select_voice(session, voice)
        finally:
            session.close()

    def synthesize(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> tuple[np.ndarray, int]:
        """Speak `text` at `rate` words per minute and base pitch 0-100; returns int16 samples and their rate."""
        session = self._open()
        try:
            session.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))  # else breathy variants differ run to run
            self._select_voice(session, voice)
            session.lib.espeak_SetParameter(ESPEAK_RATE, int(rate), 0)
            session.lib.espeak_SetParameter(ESPEAK_PITCH, int(pitch), 0)
            data = text.encode("utf-8")
            status = session.lib.espeak_Synth(
                data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
            session.lib.espeak_Synchronize()
            if status != EE_OK:
                raise RuntimeError(f"espeak-ng failed ({status}) on {text!r} with voice '{voice}'")
            samples = np.concatenate(session.chunks) if session.chunks else np.zeros(0, np.int16)
        finally:
            session.close()
        return samples, session.sample_rate
