"""Load-time repacking (hl_repack; the HL_TYPE_*_R16 layouts of Q4_0, Q8_0, Q4_K and Q6_K; cli/repack.py).

* The layouts against a numpy repacking written from quants.h's description (per 16-row panel and block:
  the 16 rows' scales, then dword j of every row's quants with row r in lane r).
* The scalar kernel of each layout (hl_mat_mul, reference) against the plain type's reference within the
  kernel tolerance, on any CPU (the layout built in numpy); where this CPU repacks, hl_repack's bytes equal
  the numpy layout, and the SIMD kernel equals the scalar one bit for bit on ragged token counts, and the
  plain type's own kernels where they do the same arithmetic (Q4_0, Q8_0: batches; Q4_K, Q6_K: every call).
* A repacked model: the same logits as without repacking (bitwise for prompts; decode within the kernel
  tolerance), and bad calls refused.
"""
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from hotlora._core import ffi, lib
from hotlora.model import Model
from hotlora.quantize import encode
from activations import without_ties
from factory import TinySpec, write_tiny_model

AUTO, REFERENCE = 0, 1
# plain type -> (its repacked type, plain block bytes)
LAYOUTS = {QT.Q4_0: (lib.HL_TYPE_Q4_0_R16, 18), QT.Q8_0: (lib.HL_TYPE_Q8_0_R16, 34),
           QT.Q4_K: (lib.HL_TYPE_Q4_K_R16, 144), QT.Q6_K: (lib.HL_TYPE_Q6_K_R16, 210)}
BLOCK = {QT.Q4_0: 32, QT.Q8_0: 32, QT.Q4_K: 256, QT.Q6_K: 256}
K_QUANTS = (QT.Q4_K, QT.Q6_K)
REPACKS = lib.hl_repack_type(lib.HL_TYPE_Q4_0, 16) == lib.HL_TYPE_Q4_0_R16  # this CPU has the SIMD kernels
NEEDS_SIMD = pytest.mark.skipif(not REPACKS, reason="this CPU keeps the rows (no AVX-512 VNNI kernel for the layouts)")


def quantized_rows(qtype, rng, n_rows, n_cols):
    w = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    return np.ascontiguousarray(encode(w, qtype.name, n_threads=1))  # uint8 [n_rows, row bytes]


def k4_scales_mins(scales):
    """Q4_K's 12 packed bytes [..., 12] -> 8 scales and 8 mins [..., 8] (get_scale_min_k4, quants.md)."""
    q = scales.astype(np.int32)
    sc = np.concatenate([q[..., 0:4] & 63, (q[..., 8:12] & 0xF) | ((q[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([q[..., 4:8] & 63, (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)], axis=-1)
    return sc.astype(np.uint8), mn.astype(np.uint8)


def numpy_r16(qtype, raw, n_cols):
    """The R16 layout from quants.h's words: [panel][block] (d[16] as f16, then qs[dwords][16] as uint32;
    Q4_K: d[16], dmin[16], sc[8][16], mn[8][16] as bytes, then qs[32][16]; Q6_K: d[16], sc[16][16], ql[32][16],
    qh[16][16])."""
    if qtype == QT.Q4_K:
        return numpy_q4_k_r16(raw, n_cols)
    if qtype == QT.Q6_K:
        return numpy_q6_k_r16(raw, n_cols)
    block = LAYOUTS[qtype][1]
    n_panels, nb, dwords = raw.shape[0] // 16, n_cols // 32, (block - 2) // 4
    blocks = raw.reshape(n_panels, 16, nb, block).transpose(0, 2, 1, 3)  # [panel, block, row, bytes]
    d = blocks[..., :2].reshape(n_panels, nb, 32)
    qs = blocks[..., 2:].reshape(n_panels, nb, 16, dwords, 4).transpose(0, 1, 3, 2, 4).reshape(n_panels, nb, -1)
    return np.ascontiguousarray(np.concatenate([d, qs], axis=2).reshape(raw.shape))


def numpy_q4_k_r16(raw, n_cols):
    n_panels, nb = raw.shape[0] // 16, n_cols // 256
    blocks = raw.reshape(n_panels, 16, nb, 144).transpose(0, 2, 1, 3)  # [panel, block, row, 144]
    sc, mn = k4_scales_mins(blocks[..., 4:16])                           # [panel, block, row, 8]
    parts = [blocks[..., 0:2], blocks[..., 2:4], sc.transpose(0, 1, 3, 2), mn.transpose(0, 1, 3, 2),
             blocks[..., 16:].reshape(n_panels, nb, 16, 32, 4).transpose(0, 1, 3, 2, 4)]
    flat = [np.ascontiguousarray(p).reshape(n_panels, nb, -1) for p in parts]
    return np.concatenate(flat, axis=2).reshape(raw.shape[0], -1)


def q6_k_unsigned(blocks):
    """Q6_K's unsigned quants q + 32 [..., 256] of blocks [..., 210] (quants.md): element 128h + 32c + l is a
    nibble of ql[64h + l (+32 for odd c)] (the high one for c >= 2) under bits 2c..2c+1 of qh[32h + l]."""
    ql, qh = blocks[..., 0:128].astype(np.uint8), blocks[..., 128:192].astype(np.uint8)
    halves = []
    for h in range(2):
        a, b, hi = ql[..., 64 * h:64 * h + 32], ql[..., 64 * h + 32:64 * h + 64], qh[..., 32 * h:32 * h + 32]
        halves += [a & 15 | (hi & 3) << 4, b & 15 | (hi >> 2 & 3) << 4,
                   a >> 4 | (hi >> 4 & 3) << 4, b >> 4 | (hi >> 6) << 4]
    return np.concatenate(halves, axis=-1)


def numpy_q6_k_r16(raw, n_cols):
    """quants.h: per group g of 16 (elements 16g + 4i + j), ql dword 2g holds quarters 0 and 2 (low and high
    nibbles of byte j), dword 2g + 1 quarters 1 and 3, qh dword g the four quarters' high bits at bits 2i."""
    n_panels, nb = raw.shape[0] // 16, n_cols // 256
    blocks = raw.reshape(n_panels, 16, nb, 210).transpose(0, 2, 1, 3)  # [panel, block, row, 210]: ql, qh, sc, d
    u = q6_k_unsigned(blocks).reshape(n_panels, nb, 16, 16, 4, 4)  # [panel, block, row, group, quarter i, j]
    lo, hi = u & 15, u >> 4
    a, b = lo[..., 0, :] | lo[..., 2, :] << 4, lo[..., 1, :] | lo[..., 3, :] << 4  # [panel, block, row, group, 4]
    h = hi[..., 0, :] | hi[..., 1, :] << 2 | hi[..., 2, :] << 4 | hi[..., 3, :] << 6
    ql = np.stack([a, b], axis=4).reshape(n_panels, nb, 16, 32, 4)  # dwords 2g, 2g + 1

    def by_dword(part):  # [panel, block, row, n dwords, 4] -> [panel, block, n dwords, row, 4]
        return part.transpose(0, 1, 3, 2, 4)

    parts = [blocks[..., 208:210], blocks[..., 192:208].transpose(0, 1, 3, 2), by_dword(ql), by_dword(h)]
    flat = [np.ascontiguousarray(p).reshape(n_panels, nb, -1) for p in parts]
    return np.concatenate(flat, axis=2).reshape(raw.shape[0], -1)


def mat_mul(type_id, raw, n_cols, n_rows, x, kernel):
    y = np.full((x.shape[0], n_rows), np.nan, dtype=np.float32)
    st = lib.hl_mat_mul(int(type_id), ffi.from_buffer(raw), n_cols, n_rows, ffi.from_buffer("float[]", x),
                        x.shape[0], ffi.from_buffer("float[]", y, require_writable=True), kernel)
    assert st == 0, ffi.string(lib.hl_last_error())
    return y


def c_repack(qtype, raw, n_cols, n_rows):
    out = np.empty((n_rows, lib.hl_row_size(LAYOUTS[qtype][0], n_cols)), dtype=np.uint8)
    kind = ffi.new("int32_t *")
    st = lib.hl_repack(int(qtype), ffi.from_buffer(raw), ffi.from_buffer(out), n_cols, n_rows, kind)
    assert st == 0 and kind[0] == LAYOUTS[qtype][0], ffi.string(lib.hl_last_error())
    return out


@pytest.mark.parametrize("qtype", list(LAYOUTS), ids=lambda t: t.name)
@pytest.mark.parametrize("n_blocks", [1, 3, 129])  # 129 x 32: past one 128-block chunk of the panel kernel
def test_reference_kernel_of_the_layout_matches_the_plain_type(qtype, n_blocks):
    n_cols = n_blocks * BLOCK[qtype]
    rng = np.random.default_rng(n_cols)
    raw = quantized_rows(qtype, rng, 48, n_cols)
    x = rng.standard_normal((5, n_cols)).astype(np.float32)
    want = mat_mul(qtype, raw, n_cols, 48, x, REFERENCE).astype(np.float64)
    got = mat_mul(LAYOUTS[qtype][0], numpy_r16(qtype, raw, n_cols), n_cols, 48, x, REFERENCE)
    w64 = gguf.quants.dequantize(raw, qtype).astype(np.float64).reshape(48, n_cols)
    assert np.all(np.abs(got - want) <= 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w64).T))


@NEEDS_SIMD
@pytest.mark.parametrize("qtype", list(LAYOUTS), ids=lambda t: t.name)
@pytest.mark.parametrize("n_blocks", [1, 3, 129])
def test_simd_kernel_equals_the_reference_bit_for_bit(qtype, n_blocks):
    n_cols = n_blocks * BLOCK[qtype]
    rng = np.random.default_rng(100 + n_cols)
    repacked = LAYOUTS[qtype][0]
    for n_rows in (16, 64):
        raw = quantized_rows(qtype, rng, n_rows, n_cols)
        packed = c_repack(qtype, raw, n_cols, n_rows)
        assert np.array_equal(packed, numpy_r16(qtype, raw, n_cols))
        for n_tokens in (1, 2, 3, 4, 5, 6, 17, 47, 64):  # every pass size of the kernels (47: 32, 8 and 7)
            x = without_ties(rng.standard_normal((n_tokens, n_cols)).astype(np.float32))  # Q8_0's ties: activations.py
            ref = mat_mul(repacked, packed, n_cols, n_rows, x, REFERENCE)
            assert np.array_equal(mat_mul(repacked, packed, n_cols, n_rows, x, AUTO), ref), (n_rows, n_tokens)
            if n_tokens >= 4 or qtype in K_QUANTS:  # the plain type's kernels doing the same arithmetic
                assert np.array_equal(mat_mul(qtype, raw, n_cols, n_rows, x, AUTO), ref)


@NEEDS_SIMD
def test_simd_q8_k_quantizer_keeps_the_references_choices():
    """The SIMD Q8_K quantizer (the activations of Q4_K and Q6_K) equals the reference on its edge blocks: largest
    |x| reached by values of both signs, an all-zero block, exact halves (rounded to even by both)."""
    rng = np.random.default_rng(7)
    n_cols = 512
    raw = quantized_rows(QT.Q4_K, rng, 16, n_cols)
    packed = c_repack(QT.Q4_K, raw, n_cols, 16)
    x = rng.standard_normal((4, n_cols)).astype(np.float32)
    x[0, 3], x[0, 100] = -5.0, 5.0
    x[1, 7], x[1, 300] = 5.0, -5.0
    x[1, 260] = -5.0
    x[2, :256] = 0.0
    x[3, :256] = np.arange(256) % 100 - 49.5  # iscale = 1 with m = -127: every product an exact half
    x[3, 0] = -127.0
    ref = mat_mul(lib.HL_TYPE_Q4_K_R16, packed, n_cols, 16, x, REFERENCE)
    assert np.array_equal(mat_mul(lib.HL_TYPE_Q4_K_R16, packed, n_cols, 16, x, AUTO), ref)


def test_bad_repack_and_mat_mul_calls_are_refused():
    raw = quantized_rows(QT.Q4_0, np.random.default_rng(1), 32, 64)
    out, kind = np.empty_like(raw), ffi.new("int32_t *")
    assert lib.hl_repack_type(lib.HL_TYPE_Q5_K, 32) == lib.HL_TYPE_Q5_K
    assert lib.hl_repack_type(lib.HL_TYPE_Q4_0, 17) == lib.HL_TYPE_Q4_0
    assert lib.hl_repack(lib.HL_TYPE_Q4_0, ffi.from_buffer(raw), ffi.from_buffer(out), 64, 17, kind) == 3
    assert b"no faster layout" in ffi.string(lib.hl_last_error())
    x, y = np.zeros((1, 64), np.float32), np.zeros((1, 17), np.float32)
    st = lib.hl_mat_mul(lib.HL_TYPE_Q4_0_R16, ffi.from_buffer(raw), 64, 17, ffi.from_buffer("float[]", x), 1,
                        ffi.from_buffer("float[]", y, require_writable=True), AUTO)
    assert st == 1 and b"whole panels of 16 rows" in ffi.string(lib.hl_last_error())


@NEEDS_SIMD
@pytest.mark.parametrize("weight_type", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("n_head", [4, 8])  # head_dim 16 (Q4_K: 64), and 8 (32): q/k/v cut at whole panels
def test_repacked_model_gives_the_same_logits(tmp_path, weight_type, n_head):
    n_embd = 256 if weight_type in ("Q4_K", "Q6_K") else 64
    spec = TinySpec(weight_type=weight_type, n_embd=n_embd, n_ff=2 * n_embd, n_head=n_head, n_head_kv=n_head // 2)
    path = write_tiny_model(tmp_path / "model.gguf", spec)
    runs = {}
    for repack in (False, True):
        with Model(path, n_ctx=32, n_threads=2, repack=repack) as m:
            assert (m._desc.n_repacked > 0) == repack
            prompt = m.eval([1, 5, 9, 12, 7, 3])
            runs[repack] = prompt, np.array([m.eval_last([t]) for t in (4, 8, 2)])
    assert np.array_equal(runs[True][0], runs[False][0])  # batches: the same arithmetic, transposed on the fly
    assert np.allclose(runs[True][1], runs[False][1], rtol=0, atol=1e-4 * np.abs(runs[False][1]).max())


@NEEDS_SIMD
def test_training_refuses_a_repacked_model(tmp_path):
    """The backward reads weight rows one by one: a repacked model is refused with a message, not misread."""
    from hotlora.errors import HotLoraError
    from hotlora.train.gradients import LoraGradients
    from hotlora.train.params import LoraParams

    path = write_tiny_model(tmp_path / "model.gguf", TinySpec(weight_type="Q8_0", n_embd=64, n_ff=128))
    with Model(path, n_ctx=32, n_threads=1) as m:
        params = LoraParams.init(m, ["q"], rank=2, alpha=2.0, rng=np.random.default_rng(0))
        with pytest.raises(HotLoraError, match="repacked .*without repacking"):
            LoraGradients(m, params, n_tokens_max=8, n_threads=1)
