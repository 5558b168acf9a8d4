"""Per-weight-type kernels of the C core, checked against the `gguf` package.

* hl_dequantize_row equals gguf.quants.dequantize bit for bit (the C code uses
  gguf's float32 evaluation order), for every weight type.
* hl_mat_mul (reference and chosen kernels) vs float64 dequantize(W) @ x:
  float types within 1e-6 of sum|w*x| per row (BF16: with x rounded to BF16, its activation type, as the
  engine rounds it); quantized types within the
  activation-quantisation bound derived in tests/KERNEL_BOUNDS.md, which is
  computed here per row (and the error is also checked to be < 1% of sum|w*x|).
* The chosen (SIMD) kernels agree with the references on random, ragged shapes (tokens and rows), and
  a token's result does not depend on the batch it is computed in (decode-sized calls of fewer than 4
  tokens may take a streaming path that agrees within the tolerance).
* Bad arguments fail with a specific status and message; F16/BF16 edge values.

Deterministic seeds; without_ties comes from activations.py.
"""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from hotlora._core import ffi, lib  # noqa: E402
from activations import roundtrip, without_ties  # noqa: E402

HL_OK, HL_ERR_INVALID, HL_ERR_NOMEM, HL_ERR_UNSUPPORTED = 0, 1, 2, 3
AUTO, REFERENCE = 0, 1

# type -> (block elements, block bytes, activation type)
WEIGHT_TYPES = {
    QT.F32: (1, 4, "f32"),
    QT.F16: (1, 2, "f32"),
    QT.BF16: (1, 2, "bf16"),
    QT.Q4_0: (32, 18, "q8_0"),
    QT.Q4_1: (32, 20, "q8_1"),
    QT.Q5_0: (32, 22, "q8_0"),
    QT.Q5_1: (32, 24, "q8_1"),
    QT.Q8_0: (32, 34, "q8_0"),
    QT.Q2_K: (256, 84, "q8_K"),
    QT.Q3_K: (256, 110, "q8_K"),
    QT.Q4_K: (256, 144, "q8_K"),
    QT.Q5_K: (256, 176, "q8_K"),
    QT.Q6_K: (256, 210, "q8_K"),
}
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
SIMPLE_QUANTS = (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0)
# byte offsets of the f16 d (and dmin) fields inside a K-quant super-block
K_SCALE_FIELDS = {QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}
ALL_WEIGHT_TYPES = list(WEIGHT_TYPES)


def _ids(types):
    return [t.name for t in types]


# ----------------------------------------------------------------- helpers

def make_weights(qtype, n_rows, n_cols, rng):
    """Random weights of qtype: (raw uint8 bytes [n_rows, row_bytes], float64 dequantised [n_rows, n_cols])."""
    if qtype in K_SCALE_FIELDS:
        bs, ts, _ = WEIGHT_TYPES[qtype]
        raw = rng.integers(0, 256, size=(n_rows, n_cols // bs, ts), dtype=np.uint8)
        for off in K_SCALE_FIELDS[qtype]:  # finite, sensible f16 scales in +-[1e-3, 1e-1]
            mag = 10.0 ** rng.uniform(-3, -1, size=raw.shape[:2])
            val = (mag * rng.choice([-1.0, 1.0], size=mag.shape)).astype(np.float16)
            raw[:, :, off:off + 2] = val.view(np.uint8).reshape(raw.shape[:2] + (2,))
        raw = raw.reshape(n_rows, -1)
    else:
        w = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
        if qtype == QT.F32:
            raw = w.view(np.uint8)
        elif qtype == QT.F16:
            raw = w.astype(np.float16).view(np.uint8)
        else:
            raw = gguf.quants.quantize(w, qtype)
    raw = np.ascontiguousarray(raw)
    return raw, gguf.quants.dequantize(raw, qtype).astype(np.float64).reshape(n_rows, n_cols)


def c_dequantize(qtype, raw_row, n):
    out = np.empty(n, dtype=np.float32)
    st = lib.hl_dequantize_row(int(qtype), ffi.from_buffer(raw_row), ffi.from_buffer("float[]", out, require_writable=True), n)
    assert st == HL_OK, ffi.string(lib.hl_last_error())
    return out


def c_mat_mul(qtype, raw, n_cols, n_rows, x, kernel):
    """hl_mat_mul of n_rows weight rows and x [n_tokens, n_cols] -> float64 [n_tokens, n_rows]."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, n_cols)
    y = np.full((x.shape[0], n_rows), np.nan, dtype=np.float32)
    st = lib.hl_mat_mul(int(qtype), ffi.from_buffer(raw), n_cols, n_rows, ffi.from_buffer("float[]", x),
                        x.shape[0], ffi.from_buffer("float[]", y, require_writable=True), kernel)
    assert st == HL_OK, ffi.string(lib.hl_last_error())
    return y.astype(np.float64)


def c_mat_vec(qtype, raw, n_cols, n_rows, x, kernel):
    """One token through hl_mat_mul -> float64 [n_rows]."""
    return c_mat_mul(qtype, raw, n_cols, n_rows, x, kernel)[0]


def last_error():
    return ffi.string(lib.hl_last_error()).decode()


def activation_half_step(x, act):
    """Per-element bound delta_i on |x_i - a_i| (a = dequantised activation), see KERNEL_BOUNDS.md."""
    x = x.astype(np.float32)
    if act in ("q8_0", "q8_1"):
        blocks = x.reshape(-1, 32)
        d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float64)
        dh = d.astype(np.float32).astype(np.float16).astype(np.float64)
        delta = d * (0.5 + 1e-5) + np.abs(d - dh) * 127
        return np.repeat(delta, 32)
    assert act == "q8_K"
    blocks = x.reshape(-1, 256)
    d = np.abs(blocks).max(axis=1).astype(np.float64) / 127
    return np.repeat(d * (0.5 + 1e-4), 256)


def quantized_error_bound(qtype, raw, w64, x):
    """Per-row bound on |computed - dequantize(W) @ x| for a quantized weight type (KERNEL_BOUNDS.md)."""
    act = WEIGHT_TYPES[qtype][2]
    delta = activation_half_step(x, act)
    absw = np.abs(w64)
    bound = absw @ delta
    # float32 rounding in the oracle's dequantisation and in the kernels' block accumulation
    bound += 1e-5 * (absw @ (np.abs(x.astype(np.float64)) + delta))
    return bound


# ----------------------------------------------------------------- 1. dequantisation

@pytest.mark.parametrize("qtype", ALL_WEIGHT_TYPES, ids=_ids(ALL_WEIGHT_TYPES))
def test_dequantize_matches_gguf_exactly(qtype):
    rng = np.random.default_rng(1000 + int(qtype))
    n_cols = 1024
    raw, _ = make_weights(qtype, 4, n_cols, rng)
    expect = gguf.quants.dequantize(raw, qtype)
    for r in range(raw.shape[0]):
        got = c_dequantize(qtype, raw[r], n_cols)
        assert np.array_equal(got.view(np.uint32), expect[r].view(np.uint32)), qtype.name


def test_row_size_matches_gguf():
    for qtype, (bs, ts, _) in WEIGHT_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[qtype] == (bs, ts)
        assert lib.hl_row_size(int(qtype), 4 * 256) == 4 * 256 // bs * ts
    assert lib.hl_row_size(int(QT.Q8_1), 64) == 2 * 40  # ours keeps s as an exact float (quants.h)
    assert lib.hl_row_size(int(QT.Q8_K), 512) == 2 * 292
    assert lib.hl_row_size(int(QT.Q4_K), 100) == 0
    assert lib.hl_row_size(4, 32) == 0  # removed Q4_2: unknown
    assert lib.hl_row_size(int(QT.F32), -1) == 0


# ----------------------------------------------------------------- 2. mat_vec vs float64

@pytest.mark.parametrize("kernel", [REFERENCE, AUTO], ids=["reference", "auto"])
@pytest.mark.parametrize("qtype", ALL_WEIGHT_TYPES, ids=_ids(ALL_WEIGHT_TYPES))
def test_mat_vec_against_float64(qtype, kernel):
    rng = np.random.default_rng(2000 + int(qtype))
    n_rows, n_cols = 16, 2048
    raw, w64 = make_weights(qtype, n_rows, n_cols, rng)
    x = rng.standard_normal(n_cols).astype(np.float32)
    x[rng.integers(0, n_cols, 8)] *= 6.0  # a few outliers, as real activations have
    seen = roundtrip(x, qtype.name)  # BF16 weights see x rounded to BF16; other float types x itself
    expect = w64 @ seen
    scale = np.abs(w64) @ np.abs(seen)  # sum |w*x| per row
    got = c_mat_vec(qtype, raw, n_cols, n_rows, x, kernel)
    err = np.abs(got - expect)
    if qtype in FLOAT_TYPES:
        assert np.all(err <= 1e-6 * scale), (err / scale).max()
    else:
        bound = quantized_error_bound(qtype, raw, w64, x)
        assert np.all(err <= bound), (err / bound).max()
        assert np.all(err <= 0.01 * scale), (err / scale).max()  # the bound is not vacuous


# ----------------------------------------------------------------- 3. fast vs reference

@pytest.mark.parametrize("qtype", ALL_WEIGHT_TYPES, ids=_ids(ALL_WEIGHT_TYPES))
def test_auto_matches_reference_ragged(qtype):
    rng = np.random.default_rng(3000 + int(qtype))
    bs = WEIGHT_TYPES[qtype][0]
    if qtype in FLOAT_TYPES:
        col_counts = [1, 7, 8, 33, 100, 1000, 4099]
    else:
        col_counts = [bs * k for k in ((1, 3, 10, 17) if bs == 256 else (1, 3, 10, 64, 129))]
    for n_cols in col_counts:
        for n_rows in (1, 3, 17):
            raw, w64 = make_weights(qtype, n_rows, n_cols, rng)
            x = (rng.standard_normal(n_cols) * rng.uniform(0.01, 10)).astype(np.float32)
            scale = np.abs(w64) @ np.abs(x.astype(np.float64))
            ref = c_mat_vec(qtype, raw, n_cols, n_rows, x, REFERENCE)
            fast = c_mat_vec(qtype, raw, n_cols, n_rows, x, AUTO)
            assert np.all(np.abs(fast - ref) <= 1e-5 * scale + 1e-30), (qtype.name, n_cols, n_rows)


@pytest.mark.parametrize("qtype", ALL_WEIGHT_TYPES, ids=_ids(ALL_WEIGHT_TYPES))
def test_multi_token_matches_reference_ragged(qtype):
    """The tiled kernels against the reference on ragged token and row counts (tiles cut anywhere)."""
    rng = np.random.default_rng(3500 + int(qtype))
    bs = WEIGHT_TYPES[qtype][0]
    n_cols = 2 * bs if bs > 1 else 67
    for n_tokens in (1, 2, 3, 5, 17, 64):
        for n_rows in (1, 7, 16, 33):
            raw, w64 = make_weights(qtype, n_rows, n_cols, rng)
            x = (rng.standard_normal((n_tokens, n_cols)) * rng.uniform(0.01, 10)).astype(np.float32)
            if WEIGHT_TYPES[qtype][2] in ("q8_0", "q8_1"):
                x = without_ties(x)
            scale = np.abs(x.astype(np.float64)) @ np.abs(w64).T  # [n_tokens, n_rows]
            ref = c_mat_mul(qtype, raw, n_cols, n_rows, x, REFERENCE)
            fast = c_mat_mul(qtype, raw, n_cols, n_rows, x, AUTO)
            assert np.all(np.abs(fast - ref) <= 1e-5 * scale + 1e-30), (qtype.name, n_tokens, n_rows)


BATCH_MIN = 4  # HL_GEMM_BATCH_MIN: calls of fewer tokens may take a decode (streaming) path


@pytest.mark.parametrize("qtype", ALL_WEIGHT_TYPES, ids=_ids(ALL_WEIGHT_TYPES))
def test_multi_token_result_independent_of_batch(qtype):
    """A token's row values are bit-identical in any batch of at least BATCH_MIN tokens and with fewer rows,
    and in any decode-sized call (1 to BATCH_MIN - 1 tokens); the two paths agree within the tolerance."""
    rng = np.random.default_rng(3700 + int(qtype))
    bs = WEIGHT_TYPES[qtype][0]
    n_cols, n_rows, n_tokens = 4 * max(bs, 32), 37, 23
    raw, w64 = make_weights(qtype, n_rows, n_cols, rng)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    batch = c_mat_mul(qtype, raw, n_cols, n_rows, x, AUTO)
    row_bytes = raw.reshape(n_rows, -1).shape[1]
    part = np.ascontiguousarray(raw.reshape(n_rows, row_bytes)[3:12])
    assert np.array_equal(c_mat_mul(qtype, part, n_cols, 9, x[4:11], AUTO), batch[4:11, 3:12]), qtype.name
    assert np.array_equal(c_mat_mul(qtype, raw, n_cols, n_rows, x[17:23], AUTO), batch[17:23]), qtype.name
    decode = c_mat_mul(qtype, raw, n_cols, n_rows, x[:BATCH_MIN - 1], AUTO)
    for t in range(BATCH_MIN - 1):
        assert np.array_equal(c_mat_mul(qtype, raw, n_cols, n_rows, x[t], AUTO)[0], decode[t]), (qtype.name, t)
    scale = np.abs(x[:BATCH_MIN - 1].astype(np.float64)) @ np.abs(w64).T
    assert np.all(np.abs(decode - batch[:BATCH_MIN - 1]) <= 1e-5 * scale), qtype.name


@pytest.mark.parametrize("qtype", [QT.F32, QT.Q4_0, QT.Q4_K], ids=["F32", "Q4_0", "Q4_K"])
def test_multi_token_many_rows(qtype):
    """Hundreds of rows (the kernels' packed and row-blocked paths): batch = single tokens bitwise, = reference."""
    rng = np.random.default_rng(3900 + int(qtype))
    n_cols, n_rows, n_tokens = 512, 600, 9
    raw, w64 = make_weights(qtype, n_rows, n_cols, rng)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    if WEIGHT_TYPES[qtype][2] in ("q8_0", "q8_1"):
        x = without_ties(x)
    batch = c_mat_mul(qtype, raw, n_cols, n_rows, x, AUTO)
    for t in (0, 5):
        assert np.array_equal(c_mat_mul(qtype, raw, n_cols, n_rows, x[t:t + BATCH_MIN], AUTO)[0], batch[t])
    scale = np.abs(x.astype(np.float64)) @ np.abs(w64).T
    assert np.all(np.abs(batch - c_mat_mul(qtype, raw, n_cols, n_rows, x, REFERENCE)) <= 1e-5 * scale)


def test_simd_name():
    assert ffi.string(lib.hl_simd_name()).decode() in ("avx512", "avx2", "scalar")


def test_zero_rows_and_zero_activations():
    raw, _ = make_weights(QT.Q4_K, 2, 256, np.random.default_rng(5))
    y = np.ones(2, dtype=np.float32)
    x = np.zeros(256, dtype=np.float32)
    for kernel in (REFERENCE, AUTO):
        assert lib.hl_mat_mul(int(QT.Q4_K), ffi.from_buffer(raw), 256, 0, ffi.from_buffer("float[]", x), 1,
                              ffi.from_buffer("float[]", y, require_writable=True), kernel) == HL_OK
        assert list(y) == [1.0, 1.0]
        for qtype in ALL_WEIGHT_TYPES:  # all-zero activations: every type gives exactly 0
            n = 256
            rw, _ = make_weights(qtype, 2, n, np.random.default_rng(6))
            assert np.all(c_mat_vec(qtype, rw, n, 2, x[:n], kernel) == 0.0), qtype.name


# ----------------------------------------------------------------- 4. bad arguments

def _mat_vec_status(qtype, n_cols, n_rows, kernel=AUTO, w=True, x=True, y=True, n_tokens=1):
    wb = np.zeros(4096, dtype=np.uint8)
    xb = np.zeros(1024, dtype=np.float32)
    yb = np.zeros(64, dtype=np.float32)
    return lib.hl_mat_mul(qtype, ffi.from_buffer(wb) if w else ffi.NULL, n_cols, n_rows,
                          ffi.from_buffer("float[]", xb) if x else ffi.NULL, n_tokens,
                          ffi.from_buffer("float[]", yb, require_writable=True) if y else ffi.NULL, kernel)


@pytest.mark.parametrize("args, status, words", [
    ((4, 32, 1), HL_ERR_UNSUPPORTED, ["unknown weight type 4"]),
    ((99, 32, 1), HL_ERR_UNSUPPORTED, ["unknown weight type 99"]),
    ((int(QT.Q8_K), 256, 1), HL_ERR_UNSUPPORTED, ["q8_K", "activation-only"]),
    ((int(QT.Q8_1), 32, 1), HL_ERR_UNSUPPORTED, ["q8_1", "activation-only"]),
    ((int(QT.Q4_0), 33, 1), HL_ERR_INVALID, ["33", "q4_0", "block size 32"]),
    ((int(QT.Q4_K), 512 + 32, 1), HL_ERR_INVALID, ["544", "q4_K", "block size 256"]),
    ((int(QT.F32), -4, 1), HL_ERR_INVALID, ["negative length"]),
    ((int(QT.Q8_0), 64, -1), HL_ERR_INVALID, ["negative row count"]),
    ((int(QT.Q8_0), 64, 1, AUTO, True, True, True, -1), HL_ERR_INVALID, ["negative token count"]),
])
def test_mat_vec_bad_arguments(args, status, words):
    assert _mat_vec_status(*args) == status
    msg = last_error()
    for word in words:
        assert word in msg, msg


def test_mat_vec_null_pointers_and_bad_kernel():
    for which in ("w", "x", "y"):
        assert _mat_vec_status(int(QT.Q8_0), 64, 2, **{which: False}) == HL_ERR_INVALID
        assert f"{which} is NULL" in last_error()
    assert _mat_vec_status(int(QT.Q8_0), 64, 2, kernel=7) == HL_ERR_INVALID
    assert "kernel" in last_error() and "7" in last_error()


def test_dequantize_bad_arguments():
    src = np.zeros(1024, dtype=np.uint8)
    dst = np.zeros(256, dtype=np.float32)

    def call(qtype, n, s=True, d=True):
        return lib.hl_dequantize_row(qtype, ffi.from_buffer(src) if s else ffi.NULL,
                                     ffi.from_buffer("float[]", dst, require_writable=True) if d else ffi.NULL, n)

    assert call(5, 32) == HL_ERR_UNSUPPORTED and "unknown type 5" in last_error()
    assert call(int(QT.Q8_1), 32) == HL_ERR_UNSUPPORTED and "q8_1" in last_error()
    assert call(int(QT.Q6_K), 100) == HL_ERR_INVALID and "q6_K" in last_error() and "256" in last_error()
    assert call(int(QT.F16), -1) == HL_ERR_INVALID and "negative" in last_error()
    assert call(int(QT.F16), 8, s=False) == HL_ERR_INVALID and "src is NULL" in last_error()
    assert call(int(QT.F16), 8, d=False) == HL_ERR_INVALID and "dst is NULL" in last_error()
    assert call(int(QT.F16), 8) == HL_OK


# ----------------------------------------------------------------- 5. edge values

@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16], ids=["F16", "BF16"])
def test_every_16_bit_pattern_dequantizes_like_gguf(qtype):
    raw = np.arange(65536, dtype=np.uint16).view(np.uint8)
    expect = gguf.quants.dequantize(raw, qtype)
    got = c_dequantize(qtype, raw, 65536)
    nan = np.isnan(expect)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), expect[~nan].view(np.uint32))  # subnormals, +-0, +-inf


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q6_K, QT.Q4_K], ids=_ids([QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q6_K, QT.Q4_K]))
def test_subnormal_and_infinite_block_scales(qtype):
    bs, ts, _ = WEIGHT_TYPES[qtype]
    rng = np.random.default_rng(77)
    n_blocks = 8
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    offsets = K_SCALE_FIELDS.get(qtype, (0, 2) if qtype == QT.Q4_1 else (0,))
    specials = np.array([0x0001, 0x03FF, 0x8200, 0x7C00, 0xFC00, 0x0000, 0x8000, 0x3C00], dtype=np.uint16)
    for off in offsets:
        raw[:, off:off + 2] = specials.view(np.uint8).reshape(n_blocks, 2)
    raw = raw.reshape(-1)
    with np.errstate(invalid="ignore"):  # inf * 0 in gguf's dequantizer
        expect = gguf.quants.dequantize(raw, qtype)
    got = c_dequantize(qtype, raw, n_blocks * bs)
    nan = np.isnan(expect)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), expect[~nan].view(np.uint32))


def test_f32_and_f16_weights_use_f32_activations():
    # An activation that f16 would flush/round (1e-8, 1+2^-20) must survive: F32 and F16 weights see x in f32.
    x = np.array([1e-8, 1.0 + 2.0 ** -20, 3e5, -7.25] * 8, dtype=np.float32)
    w = np.ones((1, 32), dtype=np.float32)
    for qtype, raw in ((QT.F32, w.view(np.uint8)), (QT.F16, w.astype(np.float16).view(np.uint8))):
        for kernel in (REFERENCE, AUTO):
            got = c_mat_vec(qtype, np.ascontiguousarray(raw), 32, 1, x, kernel)[0]
            expect = float(np.sum(x.astype(np.float64)))
            assert abs(got - expect) <= 1e-6 * float(np.sum(np.abs(x.astype(np.float64)))), qtype.name


@pytest.mark.parametrize("n_tokens", [1, 2, 5])
def test_bf16_weights_see_activations_rounded_as_gguf_rounds(n_tokens):
    """BF16 weights dot x rounded to BF16 (nearest, ties to even: gguf's own BF16 rounding is the oracle), in
    the reference, the decode-sized and the batch kernels. One-hot rows return each rounded value exactly."""
    ties = [1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -(1.0 + 2.0 ** -8), 2.0 ** -20 * (1 + 2.0 ** -8)]
    near = [1.0 + 2.0 ** -20, 1.0 + 2.0 ** -8 + 2.0 ** -20, 3e5, -7.25, 1e-8, 65504.0, 1.0 - 2.0 ** -24]
    rng = np.random.default_rng(81)
    x = np.resize(np.array(ties + near, dtype=np.float32), (n_tokens, 64)) * np.float32(1.0)
    x[:, 40:] = rng.standard_normal((n_tokens, 24)).astype(np.float32)
    expect = gguf.quants.dequantize(gguf.quants.quantize(x, QT.BF16), QT.BF16).astype(np.float32)
    assert not np.array_equal(expect, x)  # the rounding is visible
    one_hot = gguf.quants.quantize(np.eye(64, dtype=np.float32), QT.BF16)
    for kernel in (REFERENCE, AUTO):
        got = c_mat_mul(QT.BF16, np.ascontiguousarray(one_hot), 64, 64, x, kernel).astype(np.float32)
        assert np.array_equal(got, expect), kernel


# ----------------------------------------------------------------- 6. activation quantizers, exactly

def _one_hot_q8_0(n):
    """Q8_0 weights whose row r is e_r (d = 1, q = 1 at element r): W @ x returns dequant(x_q8)."""
    raw = np.zeros((n, n // 32, 34), dtype=np.uint8)
    raw[:, :, 0:2] = np.array([1.0], dtype=np.float16).view(np.uint8)
    for r in range(n):
        raw[r, r // 32, 2 + r % 32] = 1
    return raw.reshape(n, -1)


@pytest.mark.parametrize("kernel", [REFERENCE, AUTO], ids=["reference", "auto"])
def test_q8_0_activations_match_reference_quantizer(kernel):
    n = 256
    rng = np.random.default_rng(61)
    x = (rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-3, 2, n // 32), 32)).astype(np.float32)
    expect = gguf.quants.dequantize(gguf.quants.quantize(x, QT.Q8_0), QT.Q8_0)  # C reference rules (roundf)
    got = c_mat_vec(QT.Q8_0, _one_hot_q8_0(n), n, n, x, kernel).astype(np.float32)
    assert np.array_equal(got, expect)


def test_q8_0_simd_quantizer_rounds_ties_to_even():
    # amax = 127 gives d = 1, id = 1: x = 2.5 is an exact tie (reference 3, SIMD 2), -0.5 likewise.
    x = np.zeros(32, dtype=np.float32)
    x[:4] = [127.0, 2.5, -0.5, 3.5]
    w = _one_hot_q8_0(32)
    ref = c_mat_vec(QT.Q8_0, w, 32, 32, x, REFERENCE)
    assert list(ref[:4]) == [127.0, 3.0, -1.0, 4.0]
    fast = c_mat_vec(QT.Q8_0, w, 32, 32, x, AUTO)
    if ffi.string(lib.hl_simd_name()) in (b"avx2", b"avx512"):
        assert list(fast[:4]) == [127.0, 2.0, -0.0, 4.0]
    else:
        assert list(fast[:4]) == list(ref[:4])


@pytest.mark.parametrize("kernel", [REFERENCE, AUTO], ids=["reference", "auto"])
def test_q8_1_sum_field(kernel):
    # Q4_1 weights with d = 0 and m = 1 in block r only: row r returns the activation's s of block r.
    nb = 8
    rng = np.random.default_rng(62)
    x = (rng.standard_normal(32 * nb) * 3).astype(np.float32)
    raw = rng.integers(0, 256, size=(nb, nb, 20), dtype=np.uint8)
    raw[:, :, 0:4] = 0
    for r in range(nb):
        raw[r, r, 2:4] = np.array([1.0], dtype=np.float16).view(np.uint8)
    q = gguf.quants.quantize(x, QT.Q8_0).reshape(nb, 34)[:, 2:].view(np.int8).astype(np.int64)
    d = np.abs(x.reshape(nb, 32)).max(axis=1) / np.float32(127)
    dh = d.astype(np.float32).astype(np.float16).astype(np.float64)
    s = dh * q.sum(axis=1)  # s = half(d) * sum(q), exact
    got = c_mat_vec(QT.Q4_1, raw.reshape(nb, -1), 32 * nb, nb, x, kernel)
    assert np.array_equal(got, s)


def _q8_k_reference(x):
    """quants.md §3 Q8_K rule in numpy: dequantised activations d * q per element."""
    out = np.empty_like(x)
    for b in range(len(x) // 256):
        blk = x[256 * b:256 * b + 256]
        m = blk[np.argmax(np.abs(blk))]  # first of the largest |x|
        if m == 0:
            out[256 * b:256 * b + 256] = 0
            continue
        iscale = np.float32(-127.0) / np.float32(m)
        q = np.minimum(127, np.rint(iscale * blk))  # float32 product, ties to even
        out[256 * b:256 * b + 256] = (np.float32(1.0) / iscale) * q.astype(np.float32)
    return out


@pytest.mark.parametrize("kernel", [REFERENCE, AUTO], ids=["reference", "auto"])
def test_q8_k_activations_match_spec(kernel):
    # Q6_K weights whose row r is e_r (d = 1, all scales 1, 6-bit value 33 at r, 32 elsewhere).
    n = 512
    raw = np.zeros((n, n // 256, 210), dtype=np.uint8)
    raw[:, :, 128:192] = 0xAA  # high bits 2 -> value 32 -> q = 0
    raw[:, :, 192:208] = 1
    raw[:, :, 208:210] = np.array([1.0], dtype=np.float16).view(np.uint8)
    for r in range(n):
        e = r % 256
        h, c, l = e // 128, (e // 32) % 4, e % 32
        raw[r, r // 256, 64 * h + l + (32 if c & 1 else 0)] |= 0x10 if c & 2 else 0x01
    raw = raw.reshape(n, -1)
    assert np.array_equal(gguf.quants.dequantize(raw, QT.Q6_K), np.eye(n, dtype=np.float32))
    rng = np.random.default_rng(63)
    x = (rng.standard_normal(n) * 2).astype(np.float32)
    x[300] = -9.0  # block 1: the largest |x| is negative (d > 0); block 0's sign is random
    got = c_mat_vec(QT.Q6_K, raw, n, n, x, kernel).astype(np.float32)
    expect = _q8_k_reference(x)
    assert np.array_equal(got, expect)  # by value: the kernels give +0 where d * (-0.0) is -0


@pytest.mark.parametrize("qtype", [t for t in ALL_WEIGHT_TYPES if t not in FLOAT_TYPES], ids=lambda t: t.name)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("kernel", [REFERENCE, AUTO], ids=["reference", "auto"])
def test_non_finite_activation_gives_non_finite_dots(qtype, bad, kernel):
    """A NaN or an infinity in a block of the activation makes every dot product with it non-finite: the
    quantizers give that block d = NaN, never finite quants that would hide it."""
    rng = np.random.default_rng(71)
    n_cols, n_rows = 512, 7
    raw, _ = make_weights(qtype, n_rows, n_cols, rng)
    x = rng.standard_normal((3, n_cols)).astype(np.float32)
    x[1, 300] = bad
    with np.errstate(invalid="ignore"):
        y = c_mat_mul(qtype, raw, n_cols, n_rows, x, kernel)
    assert np.isfinite(y[[0, 2]]).all() and not np.isfinite(y[1]).any()
