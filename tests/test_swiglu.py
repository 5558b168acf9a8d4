"""The feed-forward's SwiGLU kernel (hl_swiglu, swiglu.c): gate = silu(gate) * up, the chosen kernel and the
expf reference against float64 on ragged lengths, each other within a few ulps, non-finite inputs, and bad calls."""
import numpy as np
import pytest

from hotlora._core import ffi, lib

AUTO, REFERENCE = 0, 1
ULPS = 4  # the AVX-512 exp's relative error (2e-7) and three roundings


def swiglu(gate, up, kernel, n=None):
    g = np.array(gate, dtype=np.float32)
    u = np.ascontiguousarray(up, dtype=np.float32)
    st = lib.hl_swiglu(ffi.from_buffer("float[]", g, require_writable=True), ffi.from_buffer("float[]", u),
                       len(g) if n is None else n, kernel)
    assert st == 0, ffi.string(lib.hl_last_error())
    return g


def silu64(g, u):
    g, u = np.asarray(g, np.float64), np.asarray(u, np.float64)
    return g / (1.0 + np.exp(-g)) * u


@pytest.mark.parametrize("kernel", [AUTO, REFERENCE])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 5632])
def test_against_float64(kernel, n):
    rng = np.random.default_rng(n)
    g = np.concatenate([rng.standard_normal(n) * 4, rng.uniform(-100, 100, n)]).astype(np.float32)[:n]
    u = rng.standard_normal(n).astype(np.float32)
    got, want = swiglu(g, u, kernel), silu64(g, u)
    tiny = np.finfo(np.float32).tiny
    assert np.all(np.abs(got - want) <= ULPS * np.finfo(np.float32).eps * np.abs(want) + tiny)


def test_kernel_agrees_with_reference_and_leaves_the_rest():
    rng = np.random.default_rng(7)
    g, u = (rng.standard_normal(40) * 8).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    fast, ref = swiglu(g, u, AUTO, n=33), swiglu(g, u, REFERENCE, n=33)
    assert np.all(np.abs(fast[:33] - ref[:33]) <= ULPS * np.finfo(np.float32).eps * np.abs(ref[:33]))
    assert np.array_equal(fast[33:], g[33:]) and np.array_equal(ref[33:], g[33:])


@pytest.mark.parametrize("kernel", [AUTO, REFERENCE])
def test_non_finite_and_extreme_gates(kernel):
    g = [np.nan, np.inf, -np.inf, -200.0, 200.0, -90.0, 0.0]
    got = swiglu(g, np.full(len(g), 2.0, np.float32), kernel)
    assert np.isnan(got[0]) and got[1] == np.inf and np.isnan(got[2])  # -inf / (1 + inf)
    assert got[3] == 0.0 and np.signbit(got[3])  # e^200 is +inf: -200 / inf = -0
    assert got[4] == 400.0 and abs(got[5]) < 1e-30 and got[6] == 0.0


def test_bad_calls():
    g = np.zeros(4, np.float32)
    buf = ffi.from_buffer("float[]", g, require_writable=True)
    for args, words in [((buf, buf, -1, AUTO), "negative length"), ((buf, buf, 4, 9), "unknown kernel"),
                        ((ffi.NULL, buf, 4, AUTO), "gate is NULL"), ((buf, ffi.NULL, 4, AUTO), "up is NULL")]:
        assert lib.hl_swiglu(*args) != 0
        assert words in ffi.string(lib.hl_last_error()).decode()
