"""Numba kernel of :meth:`netstorm.awareness.BandwidthEstimator.observe_many` (private).

:func:`fold` is an exact transcription of ``observe`` and ``_update``, so a batch gives the
estimate that one call per observation gives.
"""

import numba
import numpy as np

__all__ = ["fold"]


@numba.njit(cache=True)
def fold(rate: np.ndarray, samples: np.ndarray, last: np.ndarray, src: np.ndarray,
         dst: np.ndarray, nbytes: np.ndarray, seconds: np.ndarray, when: np.ndarray,
         capped: np.ndarray, alpha: float, jump: float) -> None:  # pragma: no cover
    """Fold the observations in, in order (zero-byte or zero-time ones are ignored)."""
    for i in range(len(src)):
        if nbytes[i] == 0 or seconds[i] == 0:
            continue
        u, v = src[i], dst[i]
        sample = nbytes[i] / seconds[i]
        old = rate[u, v]
        if capped[i] and sample < old:  # a lower bound below the estimate: keep it
            pass
        elif samples[u, v] == 0 or abs(sample - old) > jump * old:
            rate[u, v] = sample
        else:
            rate[u, v] += alpha * (sample - rate[u, v])
        samples[u, v] += 1
        last[u, v] = when[i]
