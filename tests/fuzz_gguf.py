"""Mutation campaign driver: loads randomly corrupted copies of a valid model or adapter file.

Run as a script (by tests/test_fuzz.py, in a subprocess so that a crash in C
shows up as a signal): each case must either load and decode, or raise
HotLoraError. Anything else prints the case and exits 1.

    python fuzz_gguf.py VALID.gguf WORK_DIR N_CASES SEED                # a model
    python fuzz_gguf.py VALID_ADAPTER WORK_DIR N_CASES SEED MODEL.gguf  # an adapter (GGUF or ggla) for MODEL
    python fuzz_gguf.py VALID.gguf WORK_DIR N_CASES SEED --tokenizer     # the vocabulary alone (hotlora.Tokenizer)
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np
from gguf import GGUFReader

import hotlora


def mutate(data: bytes, rng: np.random.Generator, header_end: int) -> bytes:
    """One of: flip bytes (mostly in the metadata), overwrite a u64 with an extreme value, truncate, splice."""
    buf = bytearray(data)
    kind = rng.integers(0, 4)
    hot = max(16, header_end)
    if kind == 0:
        for _ in range(rng.integers(1, 8)):
            pos = rng.integers(0, hot if rng.random() < 0.9 else len(buf))
            buf[pos] = rng.integers(0, 256)
    elif kind == 1:
        pos = rng.integers(0, hot - 8)
        extremes = [0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, int(rng.integers(0, 2**32))]
        value = extremes[rng.integers(0, len(extremes))]
        buf[pos:pos + 8] = value.to_bytes(8, "little")
    elif kind == 2:
        del buf[rng.integers(0, len(buf)):]
    else:
        start, length = rng.integers(0, hot), rng.integers(1, 64)
        buf[start:start] = bytes(rng.integers(0, 256, size=length, dtype=np.uint8))
    return bytes(buf)


def run_case(path: Path, model: hotlora.Model | str | None) -> bool:
    """True if the file loaded and decoded, False if it was refused with a one-line HotLoraError."""
    try:
        if model == "--tokenizer":
            tok = hotlora.Tokenizer(path)
            tok.detokenize(tok.tokenize("fuzz <|endoftext|> t\u00e9st \U0001F999"))
            return True
        if model is not None:  # an adapter: load, apply, decode, unload
            adapter = model.load_adapter(path)
            model.set_adapters({adapter: 1.0})
            model.reset()
            model.eval([0, 1])
            model.unload_adapter(adapter)
            return True
        with hotlora.Model(path, n_ctx=16, n_threads=1, n_batch=4) as m:
            m.eval([0, min(1, m.n_vocab - 1)])
            m.detokenize(m.tokenize("fuzz <|endoftext|> test"))
        return True
    except hotlora.HotLoraError as e:
        message = str(e)
        assert message and "\n" not in message, f"error message is not one line: {message!r}"
        return False


def main(valid: str, work_dir: str, n_cases: str, seed: str, model_path: str | None = None) -> int:
    data = Path(valid).read_bytes()
    header_end = GGUFReader(valid).data_offset if data[:4] == b"GGUF" else 256
    model = model_path
    if model_path and model_path != "--tokenizer":
        model = hotlora.Model(model_path, n_ctx=16, n_threads=1, n_batch=4)
    rng = np.random.default_rng(int(seed))
    case = Path(work_dir) / "case.gguf"
    loaded = 0
    for i in range(int(n_cases)):
        case.write_bytes(mutate(data, rng, header_end))
        try:
            loaded += run_case(case, model)
        except Exception:
            Path(work_dir, "failing.gguf").write_bytes(case.read_bytes())
            print(f"case {i}: unexpected exception", file=sys.stderr)
            traceback.print_exc()
            return 1
    print(f"{n_cases} cases ok: {loaded} loaded, {int(n_cases) - loaded} refused")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
