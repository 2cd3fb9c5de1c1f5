"""How many examples a property test tries: few in the suite, many in ``make thorough``.

The suite must stay within its time budget on two cores, and each example of the
properties that go through DuckDB costs tens of milliseconds. ``HAKURIVER_THOROUGH=1``
(set by ``make thorough`` and ``make chaos``) gives them the larger count.
"""

from __future__ import annotations

import os

THOROUGH = os.environ.get("HAKURIVER_THOROUGH", "") not in ("", "0")


def examples(quick: int, thorough: int) -> int:
    """``quick`` examples in the ordinary run, ``thorough`` when asked for."""
    return thorough if THOROUGH else quick
