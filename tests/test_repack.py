"""Load-time repacking (hl_repack, HL_TYPE_Q4_0_R16; cli/repack.py).

* The layout against a numpy repacking written from the header's description (per 16-row panel and block:
  the 16 rows' d, then dword j of every row's quants with row r in lane r).
* The scalar kernel of the layout (hl_mat_mul, reference) against Q4_0's reference within the kernel
  tolerance, on any CPU (the layout built in numpy); where this CPU repacks, hl_repack's bytes equal the
  numpy layout and the SIMD kernel equals the scalar one bit for bit on ragged token counts, and Q4_0's own
  batch path bit for bit.
* A repacked model: the same logits as without repacking (bitwise for prompts; decode within the kernel
  tolerance), the map's pages released, and hl_model_create refusing the layout where rows are read one by one.
"""
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from hotlora._core import ffi, lib
from hotlora.model import Model
from factory import TinySpec, write_tiny_model

R16 = lib.HL_TYPE_Q4_0_R16
AUTO, REFERENCE = 0, 1
REPACKS = lib.hl_repack_type(lib.HL_TYPE_Q4_0, 16) == R16  # this CPU has the layout's SIMD kernel


def q4_0_rows(rng, n_rows, n_cols):
    w = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    return np.ascontiguousarray(gguf.quants.quantize(w, QT.Q4_0))  # uint8 [n_rows, n_cols / 32 * 18]


def numpy_r16(raw, n_cols):
    """The R16 layout from the header's words: [panel][block] (d[16] as f16, qs[4][16] as uint32)."""
    n_rows, nb = raw.shape[0], n_cols // 32
    blocks = raw.reshape(n_rows // 16, 16, nb, 18).transpose(0, 2, 1, 3)  # [panel, block, row, 18]
    d = blocks[..., :2].reshape(n_rows // 16, nb, 32)
    qs = blocks[..., 2:].reshape(n_rows // 16, nb, 16, 4, 4).transpose(0, 1, 3, 2, 4).reshape(n_rows // 16, nb, 256)
    return np.ascontiguousarray(np.concatenate([d, qs], axis=2).reshape(n_rows, -1))


def mat_mul(type_id, raw, n_cols, n_rows, x, kernel):
    y = np.full((x.shape[0], n_rows), np.nan, dtype=np.float32)
    st = lib.hl_mat_mul(type_id, ffi.from_buffer(raw), n_cols, n_rows, ffi.from_buffer("float[]", x), x.shape[0],
                        ffi.from_buffer("float[]", y, require_writable=True), kernel)
    assert st == 0, ffi.string(lib.hl_last_error())
    return y


def c_repack(raw, n_cols, n_rows):
    out, kind = np.empty_like(raw), ffi.new("int32_t *")
    st = lib.hl_repack(lib.HL_TYPE_Q4_0, ffi.from_buffer(raw), ffi.from_buffer(out), n_cols, n_rows, kind)
    assert st == 0 and kind[0] == R16, ffi.string(lib.hl_last_error())
    return out


@pytest.mark.parametrize("n_cols", [32, 96, 4128])  # 4128: past one 128-block chunk of the panel kernel
def test_reference_kernel_of_the_layout_matches_q4_0(n_cols):
    rng = np.random.default_rng(n_cols)
    raw = q4_0_rows(rng, 48, n_cols)
    x = rng.standard_normal((5, n_cols)).astype(np.float32)
    want = mat_mul(lib.HL_TYPE_Q4_0, raw, n_cols, 48, x, REFERENCE).astype(np.float64)
    got = mat_mul(R16, numpy_r16(raw, n_cols), n_cols, 48, x, REFERENCE)
    w64 = gguf.quants.dequantize(raw, QT.Q4_0).astype(np.float64).reshape(48, n_cols)
    scale = np.abs(x.astype(np.float64)) @ np.abs(w64).T
    assert np.all(np.abs(got - want) <= 1e-5 * scale)


@pytest.mark.skipif(not REPACKS, reason="this CPU keeps Q4_0 rows (no AVX-512 VNNI kernel for the layout)")
@pytest.mark.parametrize("n_cols", [32, 96, 4128])
def test_simd_kernel_equals_the_reference_bit_for_bit(n_cols):
    rng = np.random.default_rng(100 + n_cols)
    for n_rows in (16, 64):
        raw = q4_0_rows(rng, n_rows, n_cols)
        packed = c_repack(raw, n_cols, n_rows)
        assert np.array_equal(packed, numpy_r16(raw, n_cols))
        for n_tokens in (1, 2, 3, 5, 17, 64):
            x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
            ref = mat_mul(R16, packed, n_cols, n_rows, x, REFERENCE)
            assert np.array_equal(mat_mul(R16, packed, n_cols, n_rows, x, AUTO), ref), (n_rows, n_tokens)
            if n_tokens >= 4:  # Q4_0's batch path does the same arithmetic after transposing on the fly
                assert np.array_equal(mat_mul(lib.HL_TYPE_Q4_0, raw, n_cols, n_rows, x, AUTO), ref)


def test_bad_repack_and_mat_mul_calls_are_refused():
    raw = q4_0_rows(np.random.default_rng(1), 32, 64)
    out, kind = np.empty_like(raw), ffi.new("int32_t *")
    assert lib.hl_repack_type(lib.HL_TYPE_Q8_0, 32) == lib.HL_TYPE_Q8_0
    assert lib.hl_repack_type(lib.HL_TYPE_Q4_0, 17) == lib.HL_TYPE_Q4_0
    assert lib.hl_repack(lib.HL_TYPE_Q4_0, ffi.from_buffer(raw), ffi.from_buffer(out), 64, 17, kind) == 3
    assert b"no faster layout" in ffi.string(lib.hl_last_error())
    x, y = np.zeros((1, 64), np.float32), np.zeros((1, 17), np.float32)
    st = lib.hl_mat_mul(R16, ffi.from_buffer(raw), 64, 17, ffi.from_buffer("float[]", x), 1,
                        ffi.from_buffer("float[]", y, require_writable=True), AUTO)
    assert st == 1 and b"whole panels of 16 rows" in ffi.string(lib.hl_last_error())


@pytest.mark.skipif(not REPACKS, reason="this CPU keeps Q4_0 rows (no AVX-512 VNNI kernel for the layout)")
@pytest.mark.parametrize("n_head", [4, 8])  # head_dim 16, and 8: threads then cut q/k/v at whole panels
def test_repacked_model_gives_the_same_logits(tmp_path, n_head):
    spec = TinySpec(weight_type="Q4_0", n_embd=64, n_ff=128, n_head=n_head, n_head_kv=n_head // 2)
    path = write_tiny_model(tmp_path / "q4_0.gguf", spec)
    tokens = [1, 5, 9, 12, 7, 3]
    runs = {}
    for repack in (False, True):
        with Model(path, n_ctx=32, n_threads=2, repack=repack) as m:
            assert (m._desc.n_repacked > 0) == repack
            prompt = m.eval(tokens)
            steps = [m.eval_last([t]) for t in (4, 8, 2)]
            runs[repack] = prompt, np.array(steps)
    assert np.array_equal(runs[True][0], runs[False][0])  # batches: the same arithmetic, transposed on the fly
    assert np.allclose(runs[True][1], runs[False][1], rtol=0, atol=1e-4 * np.abs(runs[False][1]).max())
