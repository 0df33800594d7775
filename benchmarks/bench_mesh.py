"""Benchmark the photonic core against plain-NumPy per-MZI baselines (and `interferometer`).

Rows (median wall time of repeats, after warm-up / compilation; JAX results blocked):

- ``unitary``: phases -> unitary for n in {4, 64, 256}, one phase set (complex128) and a
  batch of 256 phase sets (complex64: 256 unitaries of 256 x 256 in complex128 would be
  268 MB, so the batch rows use float32 phases / complex64 matrices for every method).
- ``decompose``: unitary -> phases for n in {64, 256}, complex128.
- ``forward``: a [4096, n] batch of complex64 amplitudes through one mesh, n in {4, 64, 256}.

Ours is the public API only (``clements_unitary``, ``apply_clements``, ``decompose_clements``;
the meshes are ``mzi_transfer`` matrices sent through ``propagate_columns``). Baselines,
timed in the same run:

- ``numpy_per_mzi``: a loop over the MZIs in layout order, each applied as a 2 x 2 rotation
  of two rows (two rows and two columns for the decomposition), with the cos / sin / exp of
  all phases precomputed vectorised. It is an independent NumPy copy of the
  ``mzi_transfer`` convention, on purpose: the correctness checks compare the two. For a
  batch of phase sets: ``numpy_per_mzi_loop`` calls it once per set (what peers do),
  ``numpy_per_mzi_bcast`` broadcasts each MZI update over the batch. Per-set loops that
  would take minutes are timed on a few sets and scaled linearly (marked
  ``"extrapolated_from"``).
- ``interferometer`` (PyPI package, optional ``bench`` extra) where it imports:
  ``square_decomposition`` (the same Clements algorithm) and
  ``Interferometer.calculate_transformation``; both multiply full n x n matrices per MZI
  (O(n^5)), so they are run only up to n = 64.

Usage: ``python benchmarks/bench_mesh.py --out runs/bench [--quick]``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib.metadata
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine_environment
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.photonics.decompose import decompose_clements
from optinc_jax.photonics.mesh import (
    ClementsPhases,
    apply_clements,
    clements_layout,
    clements_unitary,
    random_clements_phases,
)

try:
    import interferometer
except ImportError:  # optional `bench` extra
    interferometer = None

BATCH = 256
FORWARD_BATCH = 4096
SLOW_LOOP_S = 20.0  # per-set loops longer than this are timed on a few sets and scaled


# ----------------------------------------------------------------------------- timing


def measure(fn: Callable[[], object], repeats: int, warmup: bool = True) -> dict:
    """Median and min wall time of ``fn()`` over ``repeats`` calls (seconds)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def measure_jax(fn: Callable[[], object], repeats: int) -> dict:
    return measure(lambda: jax.block_until_ready(fn()), repeats)


def measure_per_set(run_one: Callable[[int], object], count: int, repeats: int) -> dict:
    """Time ``run_one(i)`` for ``i < count``; scale from a few sets if it would be slow."""
    start = time.perf_counter()
    run_one(0)
    one = time.perf_counter() - start
    sets = count if one * count <= SLOW_LOOP_S else max(1, min(count, int(SLOW_LOOP_S / 4 / one)))
    result = measure(lambda: [run_one(i) for i in range(sets)], repeats if sets == count else 1)
    if sets < count:
        result = {
            **result,
            "median_s": result["median_s"] * count / sets,
            "min_s": result["min_s"] * count / sets,
            "extrapolated_from": sets,
        }
    return result


# ------------------------------------------------------------------- numpy baselines


def numpy_coeffs(phases: ClementsPhases, dtype) -> tuple[np.ndarray, ...]:
    """2 x 2 transfer coefficients of every MZI (vectorised; trailing axis = MZI)."""
    theta, phi = np.asarray(phases.theta), np.asarray(phases.phi)
    e = np.exp(1j * phi).astype(dtype)
    c, s = np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)
    return e * c, -s, e * s, c


def numpy_mesh_rows(phases: ClementsPhases, x: np.ndarray) -> np.ndarray:
    """Apply the mesh per MZI to ``x [n, ...]`` (modes first), in place; returns ``x``.

    Phases may carry a leading batch axis ``[B, m]``, matching ``x [n, B, ...]``.
    """
    t00, t01, t10, t11 = (np.moveaxis(t, -1, 0) for t in numpy_coeffs(phases, x.dtype))
    extra = (None,) * (x.ndim - 1 - (t00.ndim - 1))
    _, top_mode = clements_layout(x.shape[0])
    for k, m in enumerate(top_mode):
        a, b, c, d = (t[k][(..., *extra)] for t in (t00, t01, t10, t11))
        top = x[m].copy()
        x[m] = a * top + b * x[m + 1]
        x[m + 1] = c * top + d * x[m + 1]
    screen = np.exp(1j * np.asarray(phases.output_phase)).astype(x.dtype)
    return x * np.moveaxis(screen, -1, 0)[(..., *extra)]


def numpy_unitary(phases: ClementsPhases, dtype) -> np.ndarray:
    n = np.shape(phases.output_phase)[-1]
    return numpy_mesh_rows(phases, np.eye(n, dtype=dtype))


def numpy_unitary_bcast(phases: ClementsPhases, dtype) -> np.ndarray:
    """Batch ``[B, n, n]``: each MZI update broadcast over the batch (modes-first layout)."""
    b, n = np.shape(phases.output_phase)
    x = np.ascontiguousarray(np.broadcast_to(np.eye(n, dtype=dtype)[:, None, :], (n, b, n)))
    return np.moveaxis(numpy_mesh_rows(phases, x), 1, 0)


def numpy_forward(phases: ClementsPhases, x: np.ndarray) -> np.ndarray:
    return numpy_mesh_rows(phases, np.ascontiguousarray(x.T)).T


def numpy_decompose(u: np.ndarray) -> tuple[list, np.ndarray]:
    """Clements nulling in NumPy, per MZI (two rows or two columns per step).

    Returns the MZIs in the order light meets them, as ``(p, theta, phi)``, and the output
    phases.
    """
    u = np.array(u, dtype=np.complex128)
    n = u.shape[0]
    right, left = [], []
    for i in range(1, n):
        for j in range(i) if i % 2 else range(1, i + 1):
            if i % 2:  # null u[n-1-j, i-1-j] with columns (p, p+1), p = i-1-j
                p, r = i - 1 - j, n - 1 - j
                x, y = u[r, p], u[r, p + 1]
                theta, phi = np.arctan2(abs(x), abs(y)), np.angle(x) - np.angle(y)
                e, c, s = np.exp(-1j * phi), np.cos(theta), np.sin(theta)
                col = u[:, p].copy()
                u[:, p] = e * c * col - s * u[:, p + 1]
                u[:, p + 1] = e * s * col + c * u[:, p + 1]
                right.append((p, theta, phi))
            else:  # null u[p+1, j-1] with rows (p, p+1), p = n+j-i-2
                p, col_index = n + j - i - 2, j - 1
                x, y = u[p, col_index], u[p + 1, col_index]
                theta, phi = np.arctan2(abs(y), abs(x)), np.angle(-y) - np.angle(x)
                e, c, s = np.exp(1j * phi), np.cos(theta), np.sin(theta)
                row = u[p].copy()
                u[p] = e * c * row - s * u[p + 1]
                u[p + 1] = e * s * row + c * u[p + 1]
                left.append((p, theta, phi))
    alpha = np.angle(np.diag(u))
    moved = []
    for p, theta, phi in reversed(left):  # T^-1 D = D' T'
        a1, a2 = alpha[p], alpha[p + 1]
        alpha[p] = np.pi - phi + a2
        moved.append((p, theta, a1 - a2 + np.pi))
    return right + moved, alpha


def numpy_ops_unitary(ops: list, alpha: np.ndarray) -> np.ndarray:
    """Rebuild the unitary from ``numpy_decompose`` output (correctness check, untimed)."""
    u = np.eye(len(alpha), dtype=np.complex128)
    for p, theta, phi in ops:
        t = np.array(
            [
                [np.exp(1j * phi) * np.cos(theta), -np.sin(theta)],
                [np.exp(1j * phi) * np.sin(theta), np.cos(theta)],
            ]
        )
        u[p : p + 2] = t @ u[p : p + 2]
    return np.exp(1j * alpha)[:, None] * u


def interferometer_of(phases: ClementsPhases):
    """An `interferometer.Interferometer` with the same MZIs and output phases."""
    mesh = interferometer.Interferometer()
    _, top_mode = clements_layout(np.shape(phases.output_phase)[-1])
    for m, theta, phi in zip(
        top_mode, np.asarray(phases.theta), np.asarray(phases.phi), strict=True
    ):
        mesh.add_BS(interferometer.Beamsplitter(int(m) + 1, int(m) + 2, theta, phi))
    mesh.output_phases = list(np.asarray(phases.output_phase))
    return mesh


def haar_unitary(rng: np.random.Generator, n: int) -> np.ndarray:
    z = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diagonal(r)
    return q * (d / np.abs(d))


# ------------------------------------------------------------------------- benchmark


def row(task: str, n: int, batch: int, dtype: str, ours: dict, baselines: dict, **extra) -> dict:
    ratios = {name: b["median_s"] / ours["median_s"] for name, b in baselines.items()}
    fastest = min(baselines, key=lambda name: baselines[name]["median_s"])
    return {
        "task": task,
        "n": n,
        "batch": batch,
        "dtype": dtype,
        "ours": ours,
        "baselines": baselines,
        "speedup": ratios,
        "fastest_baseline": fastest,
        "speedup_vs_fastest": ratios[fastest],
        **extra,
    }


def bench_unitary(n: int, repeats: int, check: bool) -> list[dict]:
    key = jax.random.key(n)
    rows = []
    phases = random_clements_phases(key, n, jnp.float64)
    ours = measure_jax(lambda: clements_unitary(phases), repeats)
    baselines = {
        "numpy_per_mzi": measure(lambda: numpy_unitary(phases, np.complex128), repeats),
    }
    if interferometer is not None and n <= 64:
        mesh = interferometer_of(phases)
        baselines["interferometer"] = measure(mesh.calculate_transformation, repeats)
        if check:
            ref = mesh.calculate_transformation()
            assert np.abs(np.asarray(clements_unitary(phases)) - ref).max() < 1e-10
    if check:
        ref = numpy_unitary(phases, np.complex128)
        assert np.abs(np.asarray(clements_unitary(phases)) - ref).max() < 1e-10
    rows.append(row("unitary", n, 1, "complex128", ours, baselines))

    batch = jax.vmap(random_clements_phases, (0, None, None))(
        jax.random.split(key, BATCH), n, jnp.float32
    )
    batched = jax.jit(jax.vmap(clements_unitary))
    ours = measure_jax(lambda: batched(batch), repeats)
    sets = [ClementsPhases(*(np.asarray(p[i]) for p in batch)) for i in range(BATCH)]
    baselines = {
        "numpy_per_mzi_loop": measure_per_set(
            lambda i: numpy_unitary(sets[i], np.complex64), BATCH, repeats
        ),
        "numpy_per_mzi_bcast": measure(
            lambda: numpy_unitary_bcast(batch, np.complex64), repeats, warmup=n < 256
        ),
    }
    if check:
        ref = numpy_unitary_bcast(batch, np.complex64)
        assert np.abs(np.asarray(batched(batch)) - ref).max() < 1e-4
    rows.append(row("unitary", n, BATCH, "complex64", ours, baselines))
    return rows


def bench_decompose(n: int, repeats: int, check: bool) -> dict:
    u = haar_unitary(np.random.default_rng(n), n)
    ours = measure_jax(lambda: decompose_clements(u), repeats)
    error = float(np.abs(np.asarray(clements_unitary(decompose_clements(u))) - u).max())
    baselines = {"numpy_per_mzi": measure(lambda: numpy_decompose(u), repeats, warmup=False)}
    if check:
        assert np.abs(numpy_ops_unitary(*numpy_decompose(u)) - u).max() < 1e-10
    skipped = {}
    if interferometer is not None:
        if n <= 64:
            baselines["interferometer"] = measure(
                lambda: interferometer.square_decomposition(u), repeats, warmup=False
            )
        else:
            skipped["interferometer"] = "O(n^5) (a full n x n product per MZI): minutes"
    return row(
        "decompose",
        n,
        1,
        "complex128",
        ours,
        baselines,
        max_reconstruction_error=error,
        **({"skipped": skipped} if skipped else {}),
    )


def bench_forward(n: int, repeats: int, check: bool) -> dict:
    phases = random_clements_phases(jax.random.key(100 + n), n, jnp.float32)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((FORWARD_BATCH, n)) + 1j * rng.standard_normal((FORWARD_BATCH, n))
    x = x.astype(np.complex64)
    xj = jnp.asarray(x)
    ours = measure_jax(lambda: apply_clements(phases, xj), repeats)
    baselines = {"numpy_per_mzi": measure(lambda: numpy_forward(phases, x), repeats)}
    # Not the mesh propagation the row measures: build U once, then one matrix product.
    via_unitary = jax.jit(lambda p, x: x @ clements_unitary(p).T)
    alternative = measure_jax(lambda: via_unitary(phases, xj), repeats)
    if check:
        ref = numpy_forward(phases, x)
        assert np.abs(np.asarray(apply_clements(phases, xj)) - ref).max() < 1e-3
        assert np.abs(np.asarray(via_unitary(phases, xj)) - ref).max() < 1e-3
    return row(
        "forward",
        n,
        FORWARD_BATCH,
        "complex64",
        ours,
        baselines,
        alternatives={"x @ clements_unitary(p).T": alternative},
    )


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'task':<10}{'n':>5}{'batch':>7}  {'dtype':<11}{'ours [s]':>11}  "
        f"{'baseline':<22}{'baseline [s]':>13}{'ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        for i, (name, b) in enumerate(r["baselines"].items()):
            lead = (
                f"{r['task']:<10}{r['n']:>5}{r['batch']:>7}  {r['dtype']:<11}"
                f"{r['ours']['median_s']:>11.3g}  "
                if i == 0
                else " " * 47
            )
            mark = "*" if "extrapolated_from" in b else " "
            print(f"{lead}{name:<22}{b['median_s']:>12.3g}{mark}{r['speedup'][name]:>8.1f}x")
        for name, why in r.get("skipped", {}).items():
            print(" " * 47 + f"{name:<22}{'skipped: ' + why}")
        for name, alt in r.get("alternatives", {}).items():
            print(" " * 18 + f"(ours, alternative: {name}: {alt['median_s']:.3g} s)")
    print("ratio = baseline time / our time (median); * = scaled from a few phase sets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write DIR/bench_mesh.json")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-check", action="store_true", help="skip correctness checks")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)  # float64 rows; batch rows pass float32 explicitly
    repeats = 3 if args.quick else 7
    check = not args.no_check

    rows = []
    for n in (4, 64, 256):
        rows += bench_unitary(n, repeats, check)
    for n in (64, 256):
        rows.append(bench_decompose(n, repeats, check))
    for n in (4, 64, 256):
        rows.append(bench_forward(n, repeats, check))
    print_table(rows)

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "rows": rows,
            "repeats": repeats,
            "quick": args.quick,
            "environment": {
                "numpy": np.__version__,
                "interferometer": importlib.metadata.version("interferometer")
                if interferometer is not None
                else None,
                **machine_environment(),
            },
        }
        path = args.out / "bench_mesh.json"
        write_json_atomically(path, report)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
