"""Character vocabulary for CTC (blank at index 0, then space, apostrophe and a-z), and the spoken digit words."""

from __future__ import annotations

import torch

CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class CharVocabulary:
    blank = 0

    def __init__(self, characters: str = CHARACTERS):
        self.characters = characters
        self.index = {c: i + 1 for i, c in enumerate(characters)}

    def __len__(self) -> int:
        return len(self.characters) + 1

    def normalize(self, text: str) -> str:
        return " ".join("".join(c for c in text.lower() if c in self.index).split())

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in self.normalize(text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.characters[i - 1] for i in ids if i != self.blank)

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, L) targets and (B,) lengths for torch's ctc_loss."""
        encoded = [self.encode(t) for t in texts]
        lens = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        targets = torch.zeros(len(encoded), max([1, *lens.tolist()]), dtype=torch.long)
        for row, ids in enumerate(encoded):
            targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return targets, lens


def ctc_greedy_decode(log_probs: torch.Tensor, lens: torch.Tensor, vocab: CharVocabulary) -> list[str]:
    """Best path: argmax per frame, collapse repeats, drop blanks."""
    best = log_probs.argmax(-1).cpu()
    texts = []
    for path, length in zip(best, lens.cpu(), strict=True):
        path = torch.unique_consecutive(path[: int(length)])
        texts.append(" ".join(vocab.decode(path.tolist()).split()))
    return texts
