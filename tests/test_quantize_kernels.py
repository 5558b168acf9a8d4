"""hl_quantize, the weight quantizer of the C core, checked against the `gguf` package.

* Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and BF16 are byte-identical to gguf.quants.quantize,
  F16 to numpy's astype(float16), F32 is a bit copy: random data at several
  magnitudes plus edge blocks (zeros, signed zeros, constants, spikes, exact
  rounding ties, mixed magnitudes), ragged row counts, random bit patterns.
* K-quants (Q2_K..Q6_K) dequantize through gguf.quants.dequantize (and equal our
  hl_dequantize_row bit for bit) with an RMS error at most 1.1x that of the
  baseline quantizer of tests/QUANTIZE_REFERENCE.md, implemented below in numpy.
* The bytes do not depend on n_threads; bad arguments fail with a specific
  status and message.

Self-contained; deterministic seeds.
"""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from hotlora._core import ffi, lib  # noqa: E402

HL_OK, HL_ERR_INVALID, HL_ERR_UNSUPPORTED = 0, 1, 3

EXACT_TYPES = (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.BF16)
K_TYPES = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
ALL_TYPES = (QT.F32, QT.F16) + EXACT_TYPES + K_TYPES
RMS_LIMIT = 1.1  # our RMS error / baseline RMS error


def _ids(types):
    return [t.name for t in types]


def last_error():
    return ffi.string(lib.hl_last_error()).decode()


def c_quantize(qtype, x, n_threads=1):
    """hl_quantize of a 2-D float32 array: uint8 [n_rows, row bytes]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n_cols = x.shape
    out = np.zeros((n_rows, lib.hl_row_size(int(qtype), n_cols)), dtype=np.uint8)
    st = lib.hl_quantize(int(qtype), ffi.from_buffer("float[]", x), ffi.from_buffer(out, require_writable=True),
                         n_rows, n_cols, n_threads)
    assert st == HL_OK, last_error()
    return out


def c_dequantize(qtype, raw_row, n):
    out = np.empty(n, dtype=np.float32)
    st = lib.hl_dequantize_row(int(qtype), ffi.from_buffer(raw_row), ffi.from_buffer("float[]", out, require_writable=True), n)
    assert st == HL_OK, last_error()
    return out


def gguf_quantize(qtype, x):
    with np.errstate(over="ignore"):  # scales beyond the half range become inf in both
        return gguf.quants.quantize(x, qtype).view(np.uint8).reshape(x.shape[0], -1)


# ------------------------------------------------- data for the exact types

def edge_blocks(qtype):
    """32-element blocks that stress the reference formulas, one per row."""
    blocks = [
        np.zeros(32),
        np.full(32, -0.0),
        np.full(32, 3.0),
        np.full(32, -2.5),
        np.eye(32)[5] * 7.0,
        -np.eye(32)[31] * 1e-3,
        np.arange(32) - 16.0,             # Q4_0/Q5_0: integer quotients, ties at .5
        np.arange(32) * 0.5,              # Q4_1/Q5_1: d = 0.5, exact grid
        np.r_[127.0, np.arange(31) - 15.5],  # Q8_0: d = 1, x.5 ties (half away from zero)
        np.r_[-8.0, np.arange(31) * 0.5 - 7.5],
        np.r_[15.0, np.arange(31) + 0.5] - 0.0,
        np.linspace(-1, 1, 32),
        np.r_[1e4, np.full(31, 1e-4)],
        np.r_[np.full(16, 65504.0), np.full(16, -65504.0)],
        np.full(32, 6e-8),                # half subnormal scales
    ]
    if qtype not in (QT.Q4_1, QT.Q5_1):  # numpy's min/max of mixed signed zeros is platform-dependent
        blocks.append(np.array([-0.0] + [0.0] * 31))
    return np.concatenate(blocks).astype(np.float32).reshape(-1, 32)


def random_rows(rng, n_rows, n_cols):
    """Gaussian rows at several magnitudes, and rows of mixed magnitudes (2^-60..2^60) within blocks."""
    scales = np.array([1.0, 1e-30, 1e30, 1e-3, 1e4])
    gauss = rng.standard_normal((n_rows, n_cols)) * scales[np.arange(n_rows) % len(scales)][:, None]
    mixed = rng.choice([-1.0, 1.0], (n_rows, n_cols)) * 2.0 ** rng.uniform(-60, 60, (n_rows, n_cols))
    return np.concatenate([gauss, mixed]).astype(np.float32)


# ----------------------------------------------------------- 1. exact types

@pytest.mark.parametrize("qtype", EXACT_TYPES, ids=_ids(EXACT_TYPES))
def test_exact_types_byte_identical_to_gguf(qtype):
    rng = np.random.default_rng(10 + int(qtype))
    for x in (edge_blocks(qtype), random_rows(rng, 37, 96), random_rows(rng, 5, 1024)):
        assert np.array_equal(c_quantize(qtype, x), gguf_quantize(qtype, x)), qtype.name


def random_bit_patterns(rng, n):
    """float32 values from uniformly random bits: NaNs with payloads, infinities, subnormals, zeros."""
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x00000001]
    return bits.view(np.float32).reshape(-1, 256)


def test_bf16_bit_patterns_match_gguf():
    x = random_bit_patterns(np.random.default_rng(1), 1 << 16)
    assert np.array_equal(c_quantize(QT.BF16, x), gguf_quantize(QT.BF16, x))


def test_f16_matches_numpy_astype():
    rng = np.random.default_rng(2)
    x = np.concatenate([random_bit_patterns(rng, 1 << 16),
                        (rng.standard_normal((64, 256)) * 2.0 ** rng.integers(-30, 20, (64, 1))).astype(np.float32),
                        np.float32([65504, 65519.99, 65520, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-26]
                                   + [0.0] * 249)[None]])
    with np.errstate(over="ignore", invalid="ignore"):
        expect = x.astype(np.float16).view(np.uint8)
    assert np.array_equal(c_quantize(QT.F16, x), expect)


def test_f32_is_a_bit_copy():
    x = random_bit_patterns(np.random.default_rng(3), 4096)
    assert np.array_equal(c_quantize(QT.F32, x), x.view(np.uint8))


# -------------------------------------------- 2. K-quants vs the baseline

def as_f16(v):
    return np.asarray(v, dtype=np.float64).astype(np.float32).astype(np.float16).astype(np.float64)


def baseline_affine(x, sub, nmax, smax):
    """QUANTIZE_REFERENCE.md, Q2_K/Q4_K/Q5_K: per-sub-block min/max, scales and mins quantized to smax."""
    xs = x.reshape(-1, 256 // sub, sub).astype(np.float64)
    lo = np.minimum(xs.min(-1), 0.0)
    s, m = (xs.max(-1) - lo) / nmax, -lo
    d, dmin = as_f16(s.max(-1, keepdims=True) / smax), as_f16(m.max(-1, keepdims=True) / smax)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.clip(np.rint(s / d), 0, smax), 0)
        mn = np.where(dmin > 0, np.clip(np.rint(m / dmin), 0, smax), 0)
        scale, offset = (d * sc)[..., None], (dmin * mn)[..., None]
        q = np.where(scale > 0, np.clip(np.rint((xs + offset) / scale), 0, nmax), 0)
    return (scale * q - offset).reshape(x.shape)


def signed_absmax(a):
    return np.take_along_axis(a, np.abs(a).argmax(-1)[..., None], -1)[..., 0]


def baseline_symmetric(x, nmax, qneg):
    """QUANTIZE_REFERENCE.md, Q3_K/Q6_K: per-16 signed absmax, scales quantized to [-qneg, qneg-1]."""
    xs = x.reshape(-1, 16, 16).astype(np.float64)
    s = signed_absmax(xs) / -nmax
    d = as_f16(signed_absmax(s)[..., None] / -qneg)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d != 0, np.clip(np.rint(s / d), -qneg, qneg - 1), 0)
        scale = (d * sc)[..., None]
        q = np.where(scale != 0, np.clip(np.rint(xs / scale), -nmax, nmax - 1), 0)
    return (scale * q).reshape(x.shape)


BASELINES = {
    QT.Q2_K: lambda x: baseline_affine(x, 16, 3, 15),
    QT.Q3_K: lambda x: baseline_symmetric(x, 4, 32),
    QT.Q4_K: lambda x: baseline_affine(x, 32, 15, 63),
    QT.Q5_K: lambda x: baseline_affine(x, 32, 31, 63),
    QT.Q6_K: lambda x: baseline_symmetric(x, 32, 128),
}
DISTRIBUTIONS = {
    "gauss": lambda rng, shape: rng.standard_normal(shape),
    "uniform": lambda rng, shape: rng.uniform(-1, 1, shape),
    "student_t3": lambda rng, shape: rng.standard_t(3, shape),
}


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def k_round_trip(qtype, x):
    """Quantize with the core, dequantize with gguf; also checks our dequantizer on two rows."""
    raw = c_quantize(qtype, x)
    y = gguf.quants.dequantize(raw, qtype).reshape(x.shape)
    for r in (0, x.shape[0] - 1):
        assert np.array_equal(c_dequantize(qtype, raw[r], x.shape[1]).view(np.uint32), y[r].view(np.uint32))
    return y


@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
@pytest.mark.parametrize("qtype", K_TYPES, ids=_ids(K_TYPES))
def test_k_quant_rms_vs_baseline(qtype, dist):
    rng = np.random.default_rng(100 + int(qtype))
    x = DISTRIBUTIONS[dist](rng, (96, 1024)).astype(np.float32)
    ours, base = rms(k_round_trip(qtype, x), x), rms(BASELINES[qtype](x), x)
    print(f"{qtype.name} {dist}: rms {ours:.5f}, baseline {base:.5f}, ratio {ours / base:.3f}")
    assert ours <= RMS_LIMIT * base, (qtype.name, dist, ours / base)


@pytest.mark.parametrize("scale", [1e-2, 1e3])
@pytest.mark.parametrize("qtype", K_TYPES, ids=_ids(K_TYPES))
def test_k_quant_rms_at_other_magnitudes(qtype, scale):
    x = (np.random.default_rng(200 + int(qtype)).standard_normal((16, 1024)) * scale).astype(np.float32)
    assert rms(k_round_trip(qtype, x), x) <= RMS_LIMIT * rms(BASELINES[qtype](x), x)


@pytest.mark.parametrize("qtype", K_TYPES, ids=_ids(K_TYPES))
def test_k_quant_edge_blocks(qtype):
    rows = np.zeros((6, 512), dtype=np.float32)
    rows[1], rows[2] = 0.375, -0.75                       # constants
    rows[3, 7] = 5.0                                      # one spike in a zero super-block
    rows[4, :256], rows[4, 256:] = 1e-12, -1e-12          # below half precision: becomes 0
    rows[5] = np.random.default_rng(4).standard_normal(512) * 1e7  # scales saturate at 65504, no inf
    y = k_round_trip(qtype, rows)
    assert np.all(np.isfinite(y))
    assert np.array_equal(y[0], np.zeros(512, np.float32))
    for r in (1, 2):
        assert np.max(np.abs(y[r] - rows[r])) <= 2e-3 * abs(rows[r, 0]), (qtype.name, r, y[r][:4])
    assert abs(y[3, 7] - 5.0) <= 0.01 and np.count_nonzero(y[3][np.arange(512) != 7]) == 0
    assert np.max(np.abs(y[4])) <= 1e-12


def test_k_quant_nan_input_does_not_crash():
    x = np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)
    x[0, 3], x[1, :] = np.nan, np.inf
    for qtype in K_TYPES:
        c_quantize(qtype, x)


# ------------------------------------------------------ 3. threads, shapes

@pytest.mark.parametrize("qtype", ALL_TYPES, ids=_ids(ALL_TYPES))
def test_bytes_do_not_depend_on_threads(qtype):
    x = np.random.default_rng(6).standard_normal((13, 512)).astype(np.float32)
    one = c_quantize(qtype, x, 1)
    for n_threads in (3, 8, 512):
        assert np.array_equal(c_quantize(qtype, x, n_threads), one), (qtype.name, n_threads)


def test_empty_shapes():
    x = np.zeros((0, 256), dtype=np.float32)
    for qtype in ALL_TYPES:
        assert c_quantize(qtype, x, 4).shape == (0, lib.hl_row_size(int(qtype), 256))
        assert c_quantize(qtype, np.zeros((3, 0), np.float32), 2).shape == (3, 0)


# ------------------------------------------------------------------ 4. errors

def call_raw(qtype, n_rows, n_cols, n_threads=1, src=True, dst=True):
    buf_src = np.zeros(1024, dtype=np.float32)
    buf_dst = np.zeros(1 << 16, dtype=np.uint8)
    return lib.hl_quantize(int(qtype), ffi.from_buffer("float[]", buf_src) if src else ffi.NULL,
                           ffi.from_buffer(buf_dst, require_writable=True) if dst else ffi.NULL,
                           n_rows, n_cols, n_threads)


@pytest.mark.parametrize("args, status, message", [
    ((99, 1, 32), HL_ERR_UNSUPPORTED, "unknown type 99"),
    ((QT.Q8_K, 1, 256), HL_ERR_UNSUPPORTED, "q8_K"),
    ((QT.Q8_1, 1, 32), HL_ERR_UNSUPPORTED, "q8_1"),
    ((QT.Q4_K, 1, 100), HL_ERR_INVALID, "row length 100 is not a multiple of q4_K's block size 256"),
    ((QT.Q4_0, 1, 48), HL_ERR_INVALID, "not a multiple of q4_0's block size 32"),
    ((QT.Q8_0, -1, 32), HL_ERR_INVALID, "negative row count -1"),
    ((QT.F16, 1, -4), HL_ERR_INVALID, "negative row length -4"),
    ((QT.Q8_0, 1, 32, 0), HL_ERR_INVALID, "n_threads 0 is outside 1..512"),
    ((QT.Q8_0, 1, 32, 513), HL_ERR_INVALID, "n_threads 513 is outside 1..512"),
    ((QT.Q8_0, 1 << 62, 32), HL_ERR_INVALID, "overflow"),
])
def test_bad_arguments(args, status, message):
    assert call_raw(*args) == status
    assert message in last_error()


def test_null_pointers():
    assert call_raw(QT.Q4_K, 1, 256, src=False) == HL_ERR_INVALID
    assert "src is NULL" in last_error()
    assert call_raw(QT.Q4_K, 1, 256, dst=False) == HL_ERR_INVALID
    assert "dst is NULL" in last_error()
