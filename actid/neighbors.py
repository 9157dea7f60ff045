"""Exact k-nearest-neighbour distances, block-wise, on CPU or GPU.

Every ID estimator in actid reads its input from :func:`nearest_neighbors`.
The search never builds the n x n distance matrix (4 n^2 bytes, 1.6 GB at
n = 20,000) and is exact despite fp32/TF32 matmuls:

1. validate (finite values, enough points) and drop exact duplicate rows;
2. centre the columns, so a large common offset cannot cancel catastrophically
   in ``|x|^2 + |y|^2 - 2 x.y`` (pytorch#42479); float64 input is centred in float64
   before the search casts it to float32;
3. per block of rows, find ``k + margin`` candidates with one matmul, with the
   block's own indices masked by index (self-distances after round-off are not 0).
   On a CPU, a search of every row (of at least 32 features) computes each tile of distances
   once for both its rows and its columns: half the flops of the n x n x D product, so on
   full-rank data it runs below that "matmul floor" (benchmarks/bench_id.py). Each point keeps
   its kc best so far, and a tile is read only where it can beat them.
   Wide data with many points may be searched in a rank-64 projection plus the residual
   norm, whose distances are lower bounds of the true ones (a quarter to a sixtieth of the
   flops). The projection is fitted to a fixed sample of rows and kept only if it certifies
   most of a pilot sample of rows (step 5): on a ResNet's activations it certifies almost none,
   and the full search is then cheaper than the projection plus a search again;
4. re-rank the candidates by the exact norm of the difference ``x_i - x_j``;
5. certify each row: its k-th exact distance must lie below the lower bound of every
   non-candidate. Rows that fail (round-off, TF32, a poor projection) are searched
   again in the full space: on a GPU first with TF32 (certified again, with TF32's slack),
   then whatever still fails in plain fp32, so the result never depends on the shortcut.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

MIN_POINTS = 10
"""Fewer distinct points than this give no meaningful neighbour statistics."""


@dataclass(frozen=True)
class Neighbors:
    """k-NN of the distinct points of a data set.

    distances: (n, k) float64, ascending per row, exact to fp32 round-off of the difference.
    indices:   (n, k) int64 into the de-duplicated points.
    points:    (n, D) the de-duplicated, centred points (fp32, on the search device).
    n_duplicates: rows removed because they exactly repeated another row.
    n_researched: rows whose candidates could not be certified exact and were searched again.
    projected: whether the candidates were searched in a low-rank projection (False: the full space).
    """

    distances: torch.Tensor
    indices: torch.Tensor
    points: torch.Tensor
    n_duplicates: int
    n_researched: int = 0
    projected: bool = False

    @property
    def n(self) -> int:
        return self.distances.shape[0]

    @property
    def k(self) -> int:
        return self.distances.shape[1]


def as_point_matrix(X, name: str = "X") -> torch.Tensor:
    """Return X as a 2-D float tensor (one flattened example per row), or raise a clear error."""
    if not isinstance(X, torch.Tensor):
        try:
            X = torch.as_tensor(X)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{name} must be a torch tensor or array-like of numbers, got {type(X).__name__}") from err
    if X.ndim < 2:
        raise ValueError(f"{name} must have shape (n_points, ...), got shape {tuple(X.shape)}; "
                         "pass one example per row, e.g. X.reshape(-1, 1) for 1-D data")
    if not (X.is_floating_point() or X.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} has dtype {X.dtype}; expected a real floating or integer tensor")
    X = X.reshape(X.shape[0], -1)
    bad = ~torch.isfinite(X).all(dim=1) if X.is_floating_point() else None
    if bad is not None and bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        shown = ", ".join(str(int(i)) for i in rows[:5])
        raise ValueError(f"{name} has {len(rows)} row(s) with NaN or Inf (first: {shown}); the distances of those "
                         "points are undefined. Drop them first, e.g. X = X[torch.isfinite(X).all(dim=1)], or find "
                         "why the model produced them.")
    return X


def _block_rows(n: int, width: int, budget_bytes: int) -> int:
    return max(1, min(n, budget_bytes // (4 * max(width, 1))))


@contextlib.contextmanager
def _tf32(enabled: bool):
    """Allow TF32 for the candidate matmul only; restore the caller's setting afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _uses_tf32(device: torch.device) -> bool:
    """Whether candidate searches on ``device`` use TF32 tensor cores (CUDA); they are certified with its slack."""
    return device.type == "cuda"


def _smallest(score: torch.Tensor, kc: int, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise kc smallest values of ``score`` and their columns (unordered), ~2.5x faster than topk
    on CPU for long rows. Exact: each of a row's kc smallest entries lies in one of the kc column
    chunks with the smallest minima, so topk runs only over those chunks (and the ragged tail)."""
    b, n = score.shape
    m = n // chunk * chunk
    if m < 4 * kc * chunk:
        top = torch.topk(score, kc, dim=1, largest=False, sorted=False)
        return top.values, top.indices
    minima = score[:, :m].view(b, -1, chunk).amin(dim=2)
    best_chunks = torch.topk(minima, kc, dim=1, largest=False, sorted=False).indices
    cols = (best_chunks[:, :, None] * chunk + torch.arange(chunk, device=score.device)).flatten(1)
    cols = torch.cat([cols, torch.arange(m, n, device=score.device).expand(b, -1)], dim=1)
    top = torch.topk(score.gather(1, cols), kc, dim=1, largest=False, sorted=False)
    return top.values, cols.gather(1, top.indices)


def _candidates(Z: torch.Tensor, rows: torch.Tensor, kc: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the kc points nearest in Z (self masked by index) and the squared Z-distance
    of the farthest of them. One matmul per block of [z, |z|^2, 1] . [-2 z, 1, |z|^2] gives the squared
    distances with no separate broadcast pass (the search is bound by writing and reading these scores)."""
    sq = (Z * Z).sum(dim=1, keepdim=True)
    one = torch.ones_like(sq)
    left, right_t = torch.cat([Z, sq, one], dim=1), torch.cat([-2 * Z, one, sq], dim=1).T
    cand = torch.empty(len(rows), kc, dtype=torch.long, device=Z.device)
    kth = torch.empty(len(rows), dtype=Z.dtype, device=Z.device)
    block = _block_rows(len(rows), len(Z), budget)
    for start in range(0, len(rows), block):
        q = rows[start:start + block]
        score = left[q] @ right_t
        score[torch.arange(len(q), device=Z.device), q] = float("inf")
        values, cand[start:start + block] = _smallest(score, kc)
        kth[start:start + block] = values.max(dim=1).values
    return cand, kth


def _merge(vals: torch.Tensor, cand: torch.Tensor, rows, new_vals: torch.Tensor, new_cand: torch.Tensor) -> None:
    """Keep, for ``rows`` (a slice or indices) of the running lists, the kc smallest of theirs and the new ones."""
    both = torch.cat([vals[rows], new_vals], dim=1)
    top = torch.topk(both, vals.shape[1], dim=1, largest=False, sorted=False)
    cand[rows] = torch.cat([cand[rows], new_cand], dim=1).gather(1, top.indices)
    vals[rows] = top.values


def _group_by_column(cols: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, kc: int):
    """Entries (col, value, row), each row of ``values``/``rows`` belonging to the column in ``cols``, gathered into
    one inf-padded line per column and cut to its kc smallest. Returns (columns, values, rows)."""
    order = torch.argsort(cols, stable=True)
    cols, values, rows = cols[order], values[order], rows[order]
    columns, counts = torch.unique_consecutive(cols, return_counts=True)
    slot = torch.repeat_interleave(torch.arange(len(columns), device=cols.device), counts)
    pos = torch.arange(len(cols), device=cols.device) - (torch.cumsum(counts, 0) - counts)[slot]
    width = values.shape[1]
    out_values = torch.full((len(columns), int(counts.max()), width), float("inf"), dtype=values.dtype,
                            device=values.device)
    out_rows = torch.zeros(out_values.shape, dtype=torch.long, device=values.device)
    out_values[slot, pos], out_rows[slot, pos] = values, rows
    out_values, out_rows = out_values.flatten(1), out_rows.flatten(1)
    if out_values.shape[1] > kc:
        top = torch.topk(out_values, kc, dim=1, largest=False, sorted=False)
        out_values, out_rows = top.values, out_rows.gather(1, top.indices)
    return columns, out_values, out_rows


def _smallest_per_column(score: torch.Tensor, kc: int, bound: torch.Tensor, chunk: int = 32):
    """For each column of ``score`` (b, w) with an entry below its ``bound`` (w,): its kc smallest such entries
    (inf-padded where it has fewer) and their rows. Returns (columns, values, rows); no transposed copy of the tile.

    The minima of chunks of ``chunk`` rows are one pass along the rows. Where every column has a finite bound (its
    kc best so far), only chunks with a minimum below it can add to its list, and after the first tiles they are
    few: only those are read. Otherwise (a column's first tile) a column's kc smallest lie in its kc chunks with
    the smallest minima (as in :func:`_smallest`)."""
    b, w = score.shape
    finite = bool(torch.isfinite(bound).all())
    if b % chunk or b < 4 * chunk:
        if finite:
            hit_rows, hit_cols = torch.nonzero(score < bound, as_tuple=True)
            if not len(hit_cols):
                return hit_cols, score.new_empty(0, kc), hit_rows.new_empty(0, kc)
            return _group_by_column(hit_cols, score[hit_rows, hit_cols, None], hit_rows[:, None], kc)
        top = torch.topk(score.T, min(kc, b), dim=1, largest=False, sorted=False)
        return torch.arange(w, device=score.device), top.values, top.indices
    chunks = score.view(b // chunk, chunk, w)
    minima = chunks.amin(dim=1)  # (b / chunk, w)
    offsets = torch.arange(chunk, device=score.device)
    if finite:
        pair_chunk, pair_col = torch.nonzero(minima < bound, as_tuple=True)
        if not len(pair_col):
            return pair_col, score.new_empty(0, kc), pair_col.new_empty(0, kc)
        values = chunks[pair_chunk, :, pair_col]  # (pairs, chunk)
        pair, offset = torch.nonzero(values < bound[pair_col, None], as_tuple=True)
        return _group_by_column(pair_col[pair], values[pair, offset, None],
                                (pair_chunk[pair] * chunk + offset)[:, None], kc)
    best = torch.topk(minima.T, min(kc, b // chunk), dim=1, largest=False, sorted=False).indices
    rows = (best[:, :, None] * chunk + offsets).flatten(1)  # (w, kc * chunk)
    cols = torch.arange(w, device=score.device)
    top = torch.topk(score[rows, cols[:, None]], min(kc, rows.shape[1]), dim=1, largest=False, sorted=False)
    return cols, top.values, rows.gather(1, top.indices)


def _smallest_per_row(score: torch.Tensor, kc: int, bound: torch.Tensor, chunk: int = 32):
    """For each row of ``score`` (b, w) with an entry below its finite ``bound`` (b,): its kc smallest such entries
    (inf-padded) and their columns. Returns (rows, values, columns). As :func:`_smallest_per_column`: where the
    chunks with a minimum below the bound are few (rows whose earlier tiles found good candidates), only those are
    read; otherwise :func:`_smallest` over the whole row."""
    b, w = score.shape
    if w % chunk == 0 and w >= 4 * kc * chunk and bool(torch.isfinite(bound).all()):
        chunks = score.view(b, w // chunk, chunk)
        below = chunks.amin(dim=2) < bound[:, None]
        if int(below.sum()) <= kc * b:
            pair_row, pair_chunk = torch.nonzero(below, as_tuple=True)
            if not len(pair_row):
                return pair_row, score.new_empty(0, kc), pair_row.new_empty(0, kc)
            values = chunks[pair_row, pair_chunk]  # (pairs, chunk)
            pair, offset = torch.nonzero(values < bound[pair_row, None], as_tuple=True)
            return _group_by_column(pair_row[pair], values[pair, offset, None],
                                    (pair_chunk[pair] * chunk + offset)[:, None], kc)
    values, cols = _smallest(score, min(kc, w))
    return torch.arange(b, device=score.device), values, cols


SYMMETRIC_ROWS = 1024
"""Rows per tile of the symmetric search (a multiple of the 32-row chunks of :func:`_smallest_per_column`)."""
SYMMETRIC_MIN_WIDTH = 32
"""The symmetric search is used for a search space of at least this many features (the rank-64 projection
included): below it, selecting candidates costs more than the matmul it halves, and the row-by-row search is
faster (measured with benchmarks/bench_id.py and random data of 8 to 257 features, n = 20,000)."""


def _candidates_all(Z: torch.Tensor, kc: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_candidates` for every row of Z, computing each tile of squared distances once for both its row set
    and its column set (distances are symmetric): half the matmul flops of a row-by-row search.

    Tiles (I, J) with J at or after I's first row: each row of I takes its kc smallest in the tile, and each
    column of J beyond I those of its entries below its kc-th best so far; running lists keep every point's kc best.
    A point's kc best over all others are among the kc best of each tile it met, so the lists end exact."""
    n = len(Z)
    sq = (Z * Z).sum(dim=1, keepdim=True)
    one = torch.ones_like(sq)
    left, right_t = torch.cat([Z, sq, one], dim=1), torch.cat([-2 * Z, one, sq], dim=1).T
    vals = torch.full((n, kc), float("inf"), dtype=Z.dtype, device=Z.device)
    cand = torch.zeros(n, kc, dtype=torch.long, device=Z.device)
    b = min(n, SYMMETRIC_ROWS)
    w = max(b, budget // (4 * b))
    tile = torch.empty(b * w, dtype=Z.dtype, device=Z.device)  # one buffer: no fresh pages per tile
    for r0 in range(0, n, b):
        r1 = min(n, r0 + b)
        for c0 in range(r0, n, w):
            c1 = min(n, c0 + w)
            score = torch.mm(left[r0:r1], right_t[:, c0:c1], out=tile[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            if c0 == r0:
                diag = torch.arange(r1 - r0, device=Z.device)
                score[diag, diag] = float("inf")
            mine, values, cols = _smallest_per_row(score, kc, vals[r0:r1].amax(dim=1))
            _merge(vals, cand, mine + r0, values, cols + c0)
            beyond = max(r1, c0)  # columns of this tile whose own rows come later take candidates from it here
            if beyond < c1:
                later = slice(beyond, c1)
                cols, values, rows = _smallest_per_column(score[:, beyond - c0:], kc, vals[later].amax(dim=1))
                _merge(vals, cand, cols + beyond, values, rows + r0)
    return cand, vals.amax(dim=1)


def _rerank(X: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, k: int, budget: int):
    """Exact distances |x_i - x_j| to the candidates, sorted; keep the k nearest."""
    dist = torch.empty(len(rows), k, dtype=torch.float64, device=X.device)
    idx = torch.empty(len(rows), k, dtype=torch.long, device=X.device)
    block = _block_rows(len(rows), cand.shape[1] * X.shape[1], budget)
    for start in range(0, len(rows), block):
        c = cand[start:start + block]
        exact = torch.linalg.vector_norm(X[c] - X[rows[start:start + block], None, :], dim=2)
        order = torch.argsort(exact, dim=1, stable=True)[:, :k]
        dist[start:start + block] = torch.gather(exact, 1, order).double()
        idx[start:start + block] = torch.gather(c, 1, order)
    return dist, idx


PROJECTION_MIN_ROWS_PER_DIM = 32
"""A projection is tried only for n >= 32 x its rank: with fewer points the full search costs less than fitting it."""
PROJECTION_SAMPLE_ROWS_PER_DIM = 8
"""The projection is fitted to a fixed sample of 8 rows per dimension of it."""
PILOT_ROWS = 256
"""Rows whose certification decides whether the projection is kept."""
PILOT_MAX_FAILURES = 0.5
"""The projection is dropped when more than this share of the pilot rows fail their certificate."""


def _sample(n: int, m: int, seed: int, device: torch.device) -> torch.Tensor:
    """A fixed (seeded, device-independent) sample of min(n, m) row indices; no global random stream is touched."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].to(device)


def _search_space(X: torch.Tensor, dims: int) -> torch.Tensor:
    """Coordinates Z = [P x, |x - P x|] for an orthonormal rank-``dims`` projection P.

    |z_i - z_j| <= |x_i - x_j| (the residual part by the reverse triangle inequality) for *any*
    orthonormal P, so a nearest-neighbour search in Z gives candidates together with a lower bound on
    every other point's distance, at dims + 1 instead of D features per dot product. P spans the top
    right singular vectors of a fixed sample of rows (from the sample's Gram matrix), made orthonormal
    by a float64 QR factorization: cheap and deterministic, and the bound holds whatever the sample.
    """
    sample = X[_sample(len(X), PROJECTION_SAMPLE_ROWS_PER_DIM * dims, 1, X.device)]
    _, vectors = torch.linalg.eigh((sample @ sample.T).double())  # ascending eigenvalues
    V = torch.linalg.qr((sample.T @ vectors[:, -dims:].to(X.dtype)).double()).Q.to(X.dtype)  # (D, dims)
    P = X @ V
    resid = ((X * X).sum(dim=1) - (P * P).sum(dim=1)).clamp_min(0).sqrt()
    return torch.cat([P, resid[:, None]], dim=1)


def _uncertified(dist: torch.Tensor, bound: torch.Tensor, Z: torch.Tensor, rows: torch.Tensor,
                 slack_factor: float) -> torch.Tensor:
    """Positions (into ``rows``) whose k-th exact distance is not certified below every non-candidate's lower bound
    sqrt(bound), allowing ``slack_factor`` x (|z_i|^2 + max |z|^2) for the round-off of the candidate matmul."""
    sqz = (Z * Z).sum(dim=1)
    slack = slack_factor * (sqz[rows] + sqz.max())
    return torch.nonzero(dist[:, -1] ** 2 > (bound - slack).double()).flatten()


@torch.no_grad()
def nearest_neighbors(
    X,
    k: int = 2,
    *,
    device: str | torch.device | None = None,
    margin: int | None = None,
    search_dims: int = 64,
    block_bytes: int | None = None,
    deduplicate: bool = True,
) -> Neighbors:
    """Exact k-NN distances of the distinct rows of ``X`` (see module docstring).

    Args:
        X: (n, ...) tensor or array; each example is flattened into one row.
        k: neighbours per point (self excluded).
        device: where to search; defaults to X's device.
        margin: extra candidates kept before the exact re-rank (default 4 on CPU, 8 on GPU).
        search_dims: rank of the projection used to find candidates when the data have more than
            twice as many features (0: search in the full space). Results stay exact: a row whose
            k-th exact distance is not certified below every non-candidate's lower bound is
            searched again in the full space without TF32.
        block_bytes: memory for one block of the distance matrix (default 16 MB CPU, cache-sized;
            1 GB GPU).
        deduplicate: drop exactly repeated rows first (their r1 = 0 makes TwoNN's ratio infinite).
    """
    X = as_point_matrix(X)
    device = torch.device(device) if device is not None else X.device
    X = X.to(device=device)
    if X.dtype == torch.float64:
        # centre before the cast: float32 keeps ~7 digits, so an offset of 1e4 would swamp 1e-3 detail
        X = X - X.mean(dim=0, keepdim=True)
    X = X.to(torch.float32)
    n_in = X.shape[0]
    n_duplicates = 0
    if deduplicate:
        X = torch.unique(X, dim=0)  # sorted rows; every estimator is permutation invariant
        n_duplicates = n_in - X.shape[0]
    n = X.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < max(MIN_POINTS, k + 1):
        raise ValueError(f"need at least {max(MIN_POINTS, k + 1)} distinct points for a {k}-NN ID estimate, got {n} "
                         f"({n_in} rows, {n_duplicates} exact duplicates removed); use a larger probe set")

    X = X - X.mean(dim=0, keepdim=True)
    tensor_cores = _uses_tf32(device)
    kc = min(n - 1, k + (margin if margin is not None else 8 if tensor_cores else 4))
    budget = block_bytes or (2**30 if device.type == "cuda" else 2**24)
    rows = torch.arange(n, device=device)

    def search(Z: torch.Tensor, query: torch.Tensor, tf32: bool):
        """Candidates of ``query`` rows in Z, re-ranked exactly in X, and the positions that failed certification."""
        with _tf32(tf32):
            # every row on a CPU: the symmetric search; a subset of rows (a pilot, a search again) or a GPU, whose
            # row blocks are large and fast: row by row
            whole = len(query) == n and Z.device.type == "cpu" and Z.shape[1] >= SYMMETRIC_MIN_WIDTH
            cand, bound = _candidates_all(Z, kc, budget) if whole else _candidates(Z, query, kc, budget)
        dist, idx = _rerank(X, query, cand, k, budget)
        # slack for the candidate matmul's round-off: TF32's unit round-off is 2^-11, fp32's 2^-24
        return dist, idx, _uncertified(dist, bound, Z, query, 5e-3 if tf32 else 1e-5)

    Z, projected = X, False
    if 0 < search_dims and 2 * search_dims < X.shape[1] and n >= PROJECTION_MIN_ROWS_PER_DIM * search_dims:
        Z = _search_space(X, search_dims)
        pilot = _sample(n, PILOT_ROWS, 2, device)
        projected = len(search(Z, pilot, tensor_cores)[2]) <= PILOT_MAX_FAILURES * len(pilot)
        Z = Z if projected else X
    dist, idx, failed = search(Z, rows, tensor_cores)
    n_researched = len(failed) if kc < n - 1 else 0
    if n_researched:
        failed = rows[failed]
        if projected and tensor_cores:  # the full space with TF32 first; certified again
            dist[failed], idx[failed], still = search(X, failed, True)
            failed = failed[still]
        if len(failed):
            dist[failed], idx[failed], _ = search(X, failed, False)
    return Neighbors(distances=dist, indices=idx, points=X, n_duplicates=n_duplicates, n_researched=n_researched,
                     projected=projected)
