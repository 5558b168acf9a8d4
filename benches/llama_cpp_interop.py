"""Optional: files move both ways between hotlora and llama.cpp (through llama-cpp-python).

1. hotlora writes (quantize to K-quant mixes, export-lora, an adapter GGUF, a PEFT adapter converted with
   rsLoRA and alpha/rank patterns folded in); llama.cpp loads and runs them; we compare its logits with ours.
2. llama.cpp writes (llama_model_quantize to Q4_K_M, Q3_K_M, Q2_K...); hotlora loads them and must match the
   float64 reference with its activation rounding (tests/activations.py) row by row.

    python benches/llama_cpp_interop.py --llama-python /tmp/lcpp/bin/python
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from activations import roundtrip  # noqa: E402
from factory import ADAPTER_TARGETS, TinySpec, write_tiny_adapter, write_tiny_model  # noqa: E402
from hf_llama import HFConfig, linear_modules, make_peft_adapter, random_model, write_gguf  # noqa: E402
from reference import forward, load_ref_model  # noqa: E402

import hotlora  # noqa: E402

TOKENS = [1, 5, 9, 33, 100, 7, 2]
OUR_TYPES = ["Q8_0", "Q2_K", "Q3_K", "Q4_K_M", "Q5_K_M", "Q6_K"]
LLAMA_FTYPES = {"Q4_0": 2, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}

LLAMA_SIDE = """
import ctypes, json, sys, numpy as np, llama_cpp
from llama_cpp import Llama
job = json.load(open(sys.argv[1]))
for name, ftype in job["quantize"].items():
    p = llama_cpp.llama_model_quantize_default_params(); p.ftype = ftype; p.nthread = 2
    assert llama_cpp.llama_model_quantize(job["f32"].encode(), (job["dir"] + f"/ll_{name}.gguf").encode(), ctypes.byref(p)) == 0
for name, (path, lora) in job["run"].items():
    kw = {"lora_path": lora} if lora else {}
    llm = Llama(model_path=path, n_ctx=32, logits_all=True, verbose=False, n_threads=2, **kw)
    llm.eval(job["tokens"])
    np.save(job["dir"] + f"/{name}.npy", np.array(llm.scores[:len(job["tokens"])]))
"""


def ours(path, adapter=None, cache_type="f16") -> np.ndarray:
    with hotlora.Model(path, n_ctx=32, cache_type=cache_type) as m:
        if adapter:
            m.set_adapters({m.load_adapter(adapter): 1.0})
        return m.eval(TOKENS)


def converted_peft(work: Path, cli: list[str]) -> tuple[str, str]:
    """An HF-layout llama written with the q/k permutation, and a PEFT adapter (rsLoRA, patterns) converted."""
    cfg = HFConfig()
    base = write_gguf(work / "hf_base.gguf", cfg, random_model(cfg, seed=3))
    peft = make_peft_adapter(cfg, linear_modules(cfg), r=8, lora_alpha=16.0, rank_pattern={"down_proj": 4},
                             alpha_pattern={"v_proj": 32.0}, use_rslora=True).save(work / "peft")
    subprocess.run(cli + ["convert-lora", str(peft), "--model", str(base), "-o", str(work / "peft.gguf")],
                   check=True, capture_output=True)
    return str(base), str(work / "peft.gguf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    spec = TinySpec(n_embd=256, n_ff=512, n_head=4)
    f32 = write_tiny_model(work / "f32.gguf", spec)
    adapter = write_tiny_adapter(work / "a.gguf", spec, [t for t in ADAPTER_TARGETS if t != "token_embd"], alpha=8.0)
    cli = [sys.executable, "-m", "hotlora"]
    for t in OUR_TYPES:
        subprocess.run(cli + ["quantize", str(f32), str(work / f"{t}.gguf"), t], check=True, capture_output=True)
    subprocess.run(cli + ["export-lora", "-m", str(f32), "--hot-lora", str(adapter), "-o", str(work / "merged.gguf")],
                   check=True, capture_output=True)
    runs = {t: (str(work / f"{t}.gguf"), None) for t in OUR_TYPES + ["merged"]} | {"lora": (str(f32), str(adapter))}
    runs["converted PEFT"] = converted_peft(work, cli)
    job = {"dir": str(work), "f32": str(f32), "tokens": TOKENS, "quantize": LLAMA_FTYPES, "run": runs}
    (work / "job.json").write_text(json.dumps(job))
    subprocess.run([args.llama_python, "-c", LLAMA_SIDE, str(work / "job.json")], check=True, capture_output=True)
    print("hotlora writes, llama.cpp runs:\n\n| file | max abs diff | max abs logit | top-1 agreement |\n|---|---:|---:|---:|")
    for name, (path, lora) in runs.items():
        a, b = ours(path, lora), np.load(work / f"{name}.npy")
        print(f"| {name} | {np.abs(a - b).max():.4f} | {np.abs(a).max():.2f} | {(a.argmax(-1) == b.argmax(-1)).mean():.2f} |")
    print("\nllama.cpp writes, hotlora runs (vs float64 reference with activation rounding):\n")
    print("| llama.cpp ftype | tensor types | median row error | max row error |\n|---|---|---:|---:|")
    for name in LLAMA_FTYPES:
        path = work / f"ll_{name}.gguf"
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        ref = forward(load_ref_model(path), TOKENS, act_quant=lambda n, x: roundtrip(x, types[n]))
        err = np.abs(ours(path, cache_type="f32") - ref).max(axis=1) / np.abs(ref).max()
        print(f"| {name} | {', '.join(sorted(set(types.values())))} | {np.median(err):.1e} | {err.max():.1e} |")


if __name__ == "__main__":
    main()
