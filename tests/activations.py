"""Activation quantisation as the CPU dot products see it (quants.md §3-§4), in numpy.

A quantized weight is dotted against its input converted to Q8_0 (Q4_0, Q5_0,
Q8_0 weights), Q8_1 (Q4_1, Q5_1) or Q8_K (K-quants), a BF16 weight against its
input rounded to BF16 (as llama.cpp does). `roundtrip` returns the dequantised
activation, so that a float64 reference using it reproduces what the engine
computes up to float32 accumulation.
"""
from __future__ import annotations

import numpy as np

ACTIVATION_TYPE = {
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K", "BF16": "BF16",
}


def _bf16(x: np.ndarray) -> np.ndarray:
    """Each float32 value rounded to the nearest BF16, ties to even (quants.md §2; finite x)."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32)
    return rounded.view(np.float32).astype(np.float64)


def _q8_0(x: np.ndarray) -> np.ndarray:
    """Blocks of 32: d = amax/127, q = round(x/d), d stored as f16.  x (..., n) float32."""
    b = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), np.float32(0)).astype(np.float32)
    q = np.rint(b * inv)
    return (q * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


def _q8_k(x: np.ndarray) -> np.ndarray:
    """Blocks of 256: m = the value of largest |x|; iscale = -127/m; q = min(127, rint(iscale x)); d = 1/iscale."""
    b = x.reshape(*x.shape[:-1], -1, 256).astype(np.float32)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    m = np.take_along_axis(b, idx, axis=-1)
    safe = np.where(m == 0, np.float32(1), m)
    iscale = (np.float32(-127) / safe).astype(np.float32)
    q = np.minimum(127, np.rint(b * iscale))
    d = np.where(m == 0, np.float32(0), (np.float32(1) / iscale).astype(np.float32))
    return (q * d.astype(np.float64)).reshape(x.shape)


ROW_BOUND = 1e-5   # typical row: float32 accumulation only
FLIP_BOUND = 5e-3  # any row: a few activations on a near-tie (|frac - 0.5| < ~1e-5) rounded the other way


def assert_matches_rounded(ours: np.ndarray, ref: np.ndarray) -> None:
    """Engine logits [T, V] against a reference using roundtrip(): the median row within ROW_BOUND and
    every row within FLIP_BOUND of max |logit|. The engine rounds its float32 activations, the reference
    its float64 ones cast to float32; a value within ~1e-6 of a rounding tie can land on either side, and
    one such flip moves a row by ~1e-3 (seen once in a few hundred rows)."""
    err = np.abs(ours - ref).max(axis=-1) / np.abs(ref).max()
    assert np.median(err) <= ROW_BOUND and err.max() <= FLIP_BOUND, err


def roundtrip(x: np.ndarray, weight_type: str) -> np.ndarray:
    """x as the dot product of a weight of this type sees it (float64); unchanged for float weights."""
    act = ACTIVATION_TYPE.get(weight_type)
    if act is None:
        return x
    x32 = np.asarray(x, dtype=np.float32)
    return {"Q8_K": _q8_k, "BF16": _bf16}.get(act, _q8_0)(x32)


def without_ties(x):
    """x [..., n] with every exact .5 tie of the Q8_0/Q8_1 quantizer (x * (1/d) in float32) moved towards 0 until
    none is left (one ulp may round to the same tie): the SIMD quantizers round ties to even and the references
    away from zero (pinned by its own test)."""
    x = np.array(x, dtype=np.float32)
    blocks = x.reshape(-1, 32)
    while True:
        with np.errstate(divide="ignore"):
            d = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
            inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        v = np.abs(blocks * inv)
        ties = v - np.floor(v) == 0.5
        if not ties.any():
            return blocks.reshape(x.shape)
        blocks[ties] = np.nextafter(blocks[ties], np.float32(0))
