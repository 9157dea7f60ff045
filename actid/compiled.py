"""Compiled CPU loops (numba) and the threads that run them.

A few inner loops of actid are thousands of operations on arrays of a few dozen entries (the MFTMA anchor solver,
the center-subspace search), where numpy or torch spend their time dispatching operations rather than computing.
Those loops are compiled by :func:`jit`, which is numba's ``njit`` with the options they all need:

* ``cache=True``: compiled once per installation (about 30 s in all on 2 cores) and loaded from ``__pycache__`` by later
  processes (a fraction of a second);
* ``nogil=True``: :func:`in_threads` runs independent pieces side by side in threads (or :func:`jit_parallel`
  compiles a ``prange`` loop);
* ``error_model="numpy"``: a division by zero gives inf or NaN, as in numpy, instead of raising;
* ``fastmath={"reassoc", "contract"}``: LLVM may reorder sums and fuse multiply-adds, so reductions run in vector
  registers (11-19% faster in the NNLS and subspace-search loops); results change at round-off, and with the
  CPU's vector width. Every loop compiled here is checked afterwards (the NNLS KKT residual), averages, or iterates
  to a tolerance far above round-off. The flags that assume no NaN or infinity are not set.

Each piece of work is computed by one thread alone, so results do not depend on the number of threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import torch
from numba import njit

FASTMATH = {"reassoc", "contract"}


def jit(fn):
    """``numba.njit`` with the options above."""
    return njit(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)(fn)


@jit
def dot(a, b):
    """The dot product of two arrays of the same shape (contiguous views, e.g. rows or their first entries)."""
    total = 0.0
    for i in range(a.size):
        total += a.flat[i] * b.flat[i]
    return total


def jit_parallel(fn):
    """:func:`jit` for a function with a ``numba.prange`` loop over independent pieces, run by numba's OpenMP
    threads: measured 1.4x faster on 2 cores than :func:`in_threads` for the center-subspace search's restarts (short
    pieces), at twice the compile time. Call :func:`match_torch_threads` first."""
    return njit(cache=True, parallel=True, error_model="numpy", fastmath=FASTMATH)(fn)


def match_torch_threads() -> None:
    """Let numba's parallel loops use as many threads as torch does (a sweep worker limited to one thread stays at
    one, instead of every worker starting a thread per core)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def in_threads(work, n: int) -> None:
    """Call ``work(start, stop)`` on contiguous slices of ``range(n)``, one slice per thread (as many threads as
    torch uses, ``torch.get_num_threads()``). ``work`` spends its time in :func:`jit` functions (which release the
    GIL) and writes its results."""
    threads = max(1, min(n, torch.get_num_threads()))
    bounds = [n * i // threads for i in range(threads + 1)]
    if threads == 1:
        work(0, n)
        return
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(threads)]:
            future.result()
