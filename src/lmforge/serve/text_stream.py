"""Incremental detokenization with stop strings: text is released only once it can no longer
turn into a stop string or into a split UTF-8 character."""

from __future__ import annotations

from lmforge.tokenizer import Tokenizer


class TextStream:
    """Feeds generated token ids in, hands out the text that is safe to send."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """(new safe text, whether a stop string ended the text)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        stop_at = self._first_stop()
        if stop_at is not None:
            piece = self.text[self.sent : max(stop_at, self.sent)]
            self.text = self.text[:stop_at]
            self.sent = len(self.text)
            return piece, True
        if self.text.endswith("\ufffd"):  # half a character: wait for the rest
            return "", False
        safe = max(len(self.text) - self._held_back(), self.sent)
        piece, self.sent = self.text[self.sent : safe], safe
        return piece, False

    def flush(self) -> str:
        """Everything not yet handed out (when the row ends without a stop string)."""
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece

    def _first_stop(self) -> int | None:
        # Only text that may contain a new match: the unsent tail plus a stop string's length.
        positions = []
        for stop in self.stop:
            found = self.text.find(stop, max(self.sent - len(stop) + 1, 0))
            if found >= 0:
                positions.append(found)
        return min(positions) if positions else None

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
