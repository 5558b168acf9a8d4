"""The greedy pair-merging loop shared by SPM (tokenizers.md §3 step 3) and BPE (§5 step 3).

Symbols sit in a doubly linked list; every adjacent pair with a priority goes on a heap; the best pair (lowest
priority value, ties → smallest left index) is merged right-into-left unless it is stale, and the new
neighbouring pairs are pushed. Symbols only ever grow, so "stale" (a side was merged away or grew) is exactly
"the combined length differs from the one recorded when the pair was pushed".
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Callable

Priority = Callable[[str, str], "float | None"]


def merge_symbols(symbols: list[str], priority: Priority) -> list[str]:
    """Merge `symbols` (one string per character) greedily; `priority(left, right)` is None for pairs that
    may not merge. Returns the final symbols in order."""
    n = len(symbols)
    if n < 2:
        return symbols
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            p = priority(symbols[left], symbols[right])
            if p is not None:
                heappush(heap, (p, left, right, len(symbols[left]) + len(symbols[right])))

    for i in range(1, n):
        push(i - 1, i)
    while heap:
        _, left, right, size = heappop(heap)
        a, b = symbols[left], symbols[right]
        if not a or not b or len(a) + len(b) != size:
            continue
        symbols[left], symbols[right] = a + b, ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])
    return [s for s in symbols if s]
