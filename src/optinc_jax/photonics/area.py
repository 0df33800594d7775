"""Area model of an ONN: the number of MZIs that map its weight matrices.

The paper's "area cost" of an OptINC unit is the number of Mach-Zehnder interferometers
(MZIs) needed to map every weight matrix of its ONN onto meshes. A real ``M x N`` weight
matrix (``out x in``) mapped by SVD, ``W = U S V^T``, needs one ``M``-mode and one ``N``-mode
mesh plus a column of ``min(M, N)`` attenuators::

    M (M - 1) / 2 + N (N - 1) / 2 + min(M, N)

The diagonal x unitary approximation (:mod:`optinc_jax.photonics.approx`) splits the matrix into
``b = ceil(max(M, N) / k)`` square blocks of size ``k = min(M, N)``, each one mesh plus one
diagonal column::

    b (k (k - 1) / 2 + k)

Weight matrix ``i`` (1-based) of an ONN with layer widths ``(w_0, w_1, ...)`` is
``w_i x w_{i-1}``. This module is pure Python (no JAX or NumPy) so that the command-line
interface can use it without importing either. The paper's own area figures live in
:mod:`optinc_jax.paper`.
"""

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

from optinc_jax.validation import require_int


class MatrixArea(NamedTuple):
    """MZI count of one weight matrix.

    Attributes:
        index: 1-based position of the matrix in the ONN.
        rows: Output width ``M``.
        cols: Input width ``N``.
        approximated: Whether the matrix uses the diagonal x unitary approximation.
        mzis: MZIs as mapped (approximated or full).
        mzis_full: MZIs of the full SVD mapping.
    """

    index: int
    rows: int
    cols: int
    approximated: bool
    mzis: int
    mzis_full: int


class AreaReport(NamedTuple):
    """MZI count of a whole ONN.

    Attributes:
        layers: Layer widths ``(w_0, ..., w_L)``.
        approx: Sorted 1-based indices of the approximated weight matrices.
        matrices: One :class:`MatrixArea` per weight matrix, in order.
        mzis: Total MZIs with the approximation.
        mzis_full: Total MZIs without any approximation.
        area_ratio: ``mzis / mzis_full`` as a fraction (``0.39``, not ``39``).
    """

    layers: tuple[int, ...]
    approx: tuple[int, ...]
    matrices: tuple[MatrixArea, ...]
    mzis: int
    mzis_full: int
    area_ratio: float


def parse_layers(spec: str) -> tuple[int, ...]:
    """Parse hyphen-separated ONN layer widths.

    Args:
        spec: Widths such as ``"4-64-128-256-128-64-4"``.

    Returns:
        The widths ``(w_0, ..., w_L)``, ``L >= 1``.

    Raises:
        ValueError: If ``spec`` is not at least two hyphen-separated positive integers.

    Examples:
        >>> parse_layers("4-64-128-4")
        (4, 64, 128, 4)
    """
    tokens = spec.split("-") if isinstance(spec, str) else []
    if len(tokens) < 2 or not all(token.strip().isdecimal() for token in tokens):
        raise ValueError(
            f"invalid layer widths {spec!r}: expected at least two hyphen-separated "
            "positive integers, such as '4-64-128-4'"
        )
    widths = tuple(int(token) for token in tokens)
    if min(widths) < 1:
        raise ValueError(
            f"invalid layer widths {spec!r}: every width must be a positive integer, "
            "such as '4-64-128-4'"
        )
    return widths


def _check_layers(layer_sizes: str | Sequence[int]) -> tuple[int, ...]:
    """Return validated layer widths from a string or a sequence of integers."""
    if isinstance(layer_sizes, str):
        return parse_layers(layer_sizes)
    widths = tuple(require_int("every layer width", width, 1) for width in layer_sizes)
    if len(widths) < 2:
        raise ValueError(f"an ONN needs at least two layer widths, got {layer_sizes!r}")
    return widths


def _parse_approx_token(token: str) -> list[int]:
    """Expand one comma-separated token (``"3"`` or ``"2-4"``); raise on anything else."""
    low, sep, high = token.partition("-")
    parts = [low, high] if sep else [low]
    if not all(part.strip().isdecimal() for part in parts):
        raise ValueError(token)
    start, stop = int(low), int(high) if sep else int(low)
    if stop < start:
        raise ValueError(token)
    return list(range(start, stop + 1))


def parse_approx(spec: str | Sequence[int], num_matrices: int) -> tuple[int, ...]:
    """Parse which weight matrices use the diagonal x unitary approximation.

    Args:
        spec: ``"none"``, ``"all"``, a 1-based index ``"3"``, a range ``"1-6"``, a
            comma-separated list of those (``"2,4,6"``, ``"2-4,6"``), or a sequence of
            integers. Case and spaces around tokens are ignored.
        num_matrices: Number of weight matrices of the ONN (layer widths minus one).

    Returns:
        The sorted 1-based indices, each in ``1..num_matrices``; ``()`` for ``"none"``.

    Raises:
        ValueError: If ``spec`` is malformed, has a reversed range, repeats an index, or
            names an index outside ``1..num_matrices``.

    Examples:
        >>> parse_approx("2-4,6", 6)
        (2, 3, 4, 6)
        >>> parse_approx("all", 3)
        (1, 2, 3)
    """
    num_matrices = require_int("num_matrices", num_matrices, 1)
    valid = f"valid indices are 1..{num_matrices}"
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "none":
            return ()
        if text == "all":
            return tuple(range(1, num_matrices + 1))
        indices: list[int] = []
        for token in text.split(","):
            try:
                indices.extend(_parse_approx_token(token.strip()))
            except ValueError:
                raise ValueError(
                    f"invalid approximated matrices {spec!r}: expected 'none', 'all', or "
                    f"comma-separated indices and ascending ranges such as '2-4,6'; {valid}"
                ) from None
    else:
        try:
            indices = [require_int("index", index, 1) for index in spec]
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid approximated matrices {spec!r}: expected positive integers; {valid}"
            ) from None
    if len(set(indices)) != len(indices):
        raise ValueError(f"invalid approximated matrices {spec!r}: an index repeats; {valid}")
    outside = [index for index in indices if not 1 <= index <= num_matrices]
    if outside:
        raise ValueError(f"invalid approximated matrices {spec!r}: {outside} out of range; {valid}")
    return tuple(sorted(indices))


def format_approx(indices: Sequence[int]) -> str:
    """Write sorted 1-based indices compactly; the inverse of :func:`parse_approx`.

    Args:
        indices: Strictly increasing positive integers.

    Returns:
        ``"none"`` for no index, else comma-separated indices and ranges.

    Raises:
        ValueError: If ``indices`` are not strictly increasing positive integers.

    Examples:
        >>> format_approx((1, 2, 3, 5, 7, 8))
        '1-3,5,7-8'
        >>> format_approx(())
        'none'
    """
    values = [require_int("every index", index, 1) for index in indices]
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"indices must be strictly increasing, got {indices!r}")
    runs: list[list[int]] = []
    for index in values:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    if not runs:
        return "none"
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def matrix_mzis(rows: int, cols: int) -> int:
    """MZIs of the full SVD mapping of a ``rows x cols`` matrix.

    Args:
        rows: Output width ``M``.
        cols: Input width ``N``.

    Returns:
        ``M (M - 1) / 2 + N (N - 1) / 2 + min(M, N)``: two meshes and the attenuators.

    Raises:
        ValueError: If ``rows`` or ``cols`` is not a positive integer.

    Examples:
        >>> matrix_mzis(64, 4)
        2026
    """
    m, n = require_int("rows", rows, 1), require_int("cols", cols, 1)
    return m * (m - 1) // 2 + n * (n - 1) // 2 + min(m, n)


def approx_matrix_mzis(rows: int, cols: int) -> int:
    """MZIs of a ``rows x cols`` matrix under the diagonal x unitary approximation.

    Args:
        rows: Output width ``M``.
        cols: Input width ``N``.

    Returns:
        ``b (k (k - 1) / 2 + k)`` with ``k = min(M, N)`` and ``b = ceil(max(M, N) / k)``:
        one ``k``-mode mesh and one column of ``k`` attenuators per square block.

    Raises:
        ValueError: If ``rows`` or ``cols`` is not a positive integer.

    Examples:
        >>> approx_matrix_mzis(64, 4)
        160
    """
    m, n = require_int("rows", rows, 1), require_int("cols", cols, 1)
    k = min(m, n)
    return math.ceil(max(m, n) / k) * (k * (k - 1) // 2 + k)


def onn_area(
    layer_sizes: str | Sequence[int], approx_layers: str | Sequence[int] = "none"
) -> AreaReport:
    """Count the MZIs of an ONN, with and without the diagonal x unitary approximation.

    Args:
        layer_sizes: Layer widths, as a sequence or as a string for :func:`parse_layers`.
        approx_layers: Approximated weight matrices, anything :func:`parse_approx` accepts.

    Returns:
        Per-matrix and total MZI counts and the area ratio.

    Raises:
        ValueError: If the widths or the approximated matrices are invalid.

    Examples:
        >>> report = onn_area("4-64-128-256-128-64-4", "1-6")
        >>> report.mzis, report.mzis_full, round(report.area_ratio, 4)
        (41664, 106260, 0.3921)
    """
    layers = _check_layers(layer_sizes)
    approx = parse_approx(approx_layers, len(layers) - 1)
    matrices = tuple(
        MatrixArea(
            index=index,
            rows=rows,
            cols=cols,
            approximated=index in approx,
            mzis=approx_matrix_mzis(rows, cols) if index in approx else matrix_mzis(rows, cols),
            mzis_full=matrix_mzis(rows, cols),
        )
        for index, (cols, rows) in enumerate(itertools.pairwise(layers), 1)
    )
    mzis = sum(matrix.mzis for matrix in matrices)
    mzis_full = sum(matrix.mzis_full for matrix in matrices)
    return AreaReport(layers, approx, matrices, mzis, mzis_full, mzis / mzis_full)


def area_ratio(
    layer_sizes: str | Sequence[int], approx_layers: str | Sequence[int] = "none"
) -> float:
    """Fraction of MZIs left after approximating the selected weight matrices.

    Args:
        layer_sizes: Layer widths, as a sequence or as a string for :func:`parse_layers`.
        approx_layers: Approximated weight matrices, anything :func:`parse_approx` accepts.

    Returns:
        ``onn_area(...).mzis / onn_area(...).mzis_full``, in ``(0, 1]``.

    Raises:
        ValueError: If the widths or the approximated matrices are invalid.

    Examples:
        >>> round(area_ratio((4, 64, 128, 256, 512, 256, 128, 64, 8), "4-6"), 4)
        0.4922
    """
    return onn_area(layer_sizes, approx_layers).area_ratio
