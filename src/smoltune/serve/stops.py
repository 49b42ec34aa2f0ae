"""The text of one request's generated tokens, released to its client only once it can no longer turn out to
be the start of a stop string (or half of a multi-byte character), and cut before the first stop string."""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


class StopText:
    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]) -> None:
        self._decode, self._stops = decode, tuple(s for s in stops if s)
        self._ids: list[int] = []
        self.text, self.stopped, self._released = "", False, 0

    def add(self, token_id: int) -> str:
        """Take one more token; return the text newly safe to send."""
        self._ids.append(token_id)
        # Decoding the whole answer again (not just the new token) keeps multi-token characters and the
        # tokenizer's spacing rules right; answers are at most a few thousand tokens.
        text = self._decode(self._ids)
        cuts = [text.find(stop) for stop in self._stops if stop in text]
        if cuts:
            self.text, self.stopped = text[: min(cuts)], True
            return self.flush()
        self.text = text
        return self._release(len(text) - self._held_back(text))

    def flush(self) -> str:
        """Everything not yet sent (the answer has ended: nothing more can complete a stop string)."""
        return self._release(len(self.text))

    def _held_back(self, text: str) -> int:
        held = len(text) - len(text.rstrip(REPLACEMENT))
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def _release(self, end: int) -> str:
        piece = self.text[self._released : end] if end > self._released else ""
        self._released = max(self._released, end)
        return piece
