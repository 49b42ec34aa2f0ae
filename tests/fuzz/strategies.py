"""The generated-value shape the fuzz tests share: scalars nested in lists and in mappings whose keys are the
names the parser under test looks for (so generated documents reach its real branches)."""

from __future__ import annotations

from hypothesis import strategies as st


def nested(scalars: st.SearchStrategy, keys: list[str], width: int, max_leaves: int) -> st.SearchStrategy:
    """`scalars`, lists of them and mappings keyed by `keys`, nested up to `max_leaves` leaves."""
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=width) | st.dictionaries(st.sampled_from(keys), inner, max_size=width),
        max_leaves=max_leaves,
    )
