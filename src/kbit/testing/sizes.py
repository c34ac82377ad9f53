"""Problem sizes of the conformance suite: the full set by default, a small set for slow providers.

``KBIT_CONFORMANCE_SMALL=1`` (read once, at import) keeps every test, oracle and tolerance but runs
the heaviest parametrizations on fewer and smaller inputs: fewer optimizer steps, no 4097-element
optimizer shapes, a smaller largest gemv weight, and fewer hypothesis examples. It exists for
providers that run kernels slowly, such as kbit-triton under Triton's CPU interpreter in CI
(``TRITON_INTERPRET=1``); real devices run the full set.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

SMALL = os.environ.get("KBIT_CONFORMANCE_SMALL", "").strip() == "1"
#: Hypothesis examples per property test in small mode (the profile's own count otherwise).
SMALL_MAX_EXAMPLES = 5


def pick(full: T, small: T) -> T:
    """``small`` when KBIT_CONFORMANCE_SMALL=1, else ``full``."""
    return small if SMALL else full
