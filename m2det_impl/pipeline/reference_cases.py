"""Raw outputs shaped like a trained M2Det512's, from the package data: the
reference's post-processing cases.

What the host side is timed on without a model (``m2det bench``'s host
ceiling) and what the simulated 310P returns, so post-processing costs there
what it costs with a real model.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from m2det_impl.resources import POSTPROCESS_CASES_FILE

__all__ = ["reference_outputs"]


def reference_outputs() -> List[Tuple[np.ndarray, np.ndarray]]:
    """(scores [P, C], loc [P, 4]) of the reference's post-processing cases
    (package data): raw outputs shaped like a trained M2Det512's."""
    cases = []
    with np.load(POSTPROCESS_CASES_FILE) as data:
        k = 0
        while f"loc_{k}" in data:
            scores = np.zeros((data[f"loc_{k}"].shape[0], 81), np.float32)
            scores[data[f"scores_rows_{k}"], data[f"scores_cols_{k}"]] = data[f"scores_vals_{k}"]
            cases.append((scores, data[f"loc_{k}"]))
            k += 1
    return cases
