"""The one "Did you mean ...?" that every error message naming an unknown key, name or value offers."""
from __future__ import annotations

import difflib


def did_you_mean(value, choices) -> str:
    """" Did you mean 'x'?" for the choice closest to `value`, or "" when none is close."""
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {hint[0]!r}?" if hint else ""
