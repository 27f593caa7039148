"""Stop sequences that can span tokens: text that might start a stop is held back until resolved."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PendingToken:
    """A token whose text is not released yet (it may belong to a stop sequence)."""

    token_id: int
    text: str
    logprob: float
    special: bool
    alternatives: list[tuple[int, str, float]]


class StopMatcher:
    """Releases token texts in order; cuts the output right before the first stop sequence.

    The stop text itself is never emitted: tokens that are (partly) inside it are released with
    their text clipped, possibly to ``""``, so the token count stays exact.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.emitted_text = ""
        self.pending: list[PendingToken] = []
        self.stopped = False

    def push(self, token: PendingToken) -> list[PendingToken]:
        """Add a token; return those that are safe to emit now. Sets ``stopped`` on a match."""
        self.pending.append(token)
        if not self.stops:
            return self._release_all()
        pending_text = "".join(t.text for t in self.pending)
        full = self.emitted_text + pending_text
        longest = max(len(s) for s in self.stops)
        search_from = max(0, len(self.emitted_text) - longest + 1)
        hits = [i for i in (full.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release_until(min(hits))
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(full)), 0, -1):
                if full.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        safe = len(full) - hold
        released: list[PendingToken] = []
        while self.pending and len(self.emitted_text) + len(self.pending[0].text) <= safe:
            tok = self.pending.pop(0)
            self.emitted_text += tok.text
            released.append(tok)
        return released

    def flush(self) -> list[PendingToken]:
        """The sequence ended otherwise (EOS, length): release everything held."""
        return self._release_all()

    def _release_all(self) -> list[PendingToken]:
        out, self.pending = self.pending, []
        self.emitted_text += "".join(t.text for t in out)
        return out

    def _release_until(self, cut: int) -> list[PendingToken]:
        out: list[PendingToken] = []
        for tok in self.pending:
            room = max(0, cut - len(self.emitted_text))
            tok.text = tok.text[:room]
            self.emitted_text += tok.text
            out.append(tok)
        self.pending = []
        return out
