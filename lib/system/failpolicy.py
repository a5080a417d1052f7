"""What a run over many input files does with the ones that fail (cannot be decoded, listed but
missing): the one policy of ``ae-featurize`` and ``ae-score``.

``on_error="skip"``: each failure is recorded and the run goes on; at the end the run fails
when more than ``max_fail_frac`` of the inputs failed. ``on_error="fail"``: the run stops at
the first failure. The errors name the parameter (``on_error``, ``max_fail_frac``), which the
commands show as their own flag.
"""

from __future__ import annotations

import math

from aekit.errors import DataError, InputError

ON_ERROR = ("skip", "fail")
DEFAULT_MAX_FAIL_FRAC = 0.05


class FailPolicy:
    """Counts the failures of one run and raises DataError when the policy says stop."""

    def __init__(self, on_error: str = "skip", max_fail_frac: float = DEFAULT_MAX_FAIL_FRAC):
        if on_error not in ON_ERROR:
            raise InputError(f"must be 'skip' or 'fail', got {on_error!r}", param="on_error")
        if (isinstance(max_fail_frac, bool) or not isinstance(max_fail_frac, (int, float))
                or not math.isfinite(max_fail_frac) or not 0.0 <= max_fail_frac <= 1.0):
            raise InputError(f"must be between 0 and 1, got {max_fail_frac!r}",
                             param="max_fail_frac")
        self.on_error = on_error
        self.max_fail_frac = float(max_fail_frac)
        self.failed = 0

    def failure(self, path: str, reason: str, consequence: str = "") -> None:
        """Record one failed input; DataError at once with ``on_error="fail"``.
        ``consequence`` ends the message (e.g. "; no output written")."""
        self.failed += 1
        if self.on_error == "fail":
            raise DataError(f"{path}: {reason} (stopped at the first failed input){consequence}",
                            param="on_error")

    def check(self, total: int, consequence: str = "") -> None:
        """DataError when more than ``max_fail_frac`` of ``total`` inputs failed."""
        if total and self.failed / total > self.max_fail_frac:
            raise DataError(f"{self.failed} of {total} inputs failed "
                            f"({100 * self.failed / total:.1f}% > {self.max_fail_frac:g})"
                            f"{consequence}", param="max_fail_frac")
