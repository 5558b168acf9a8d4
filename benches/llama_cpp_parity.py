"""Optional cross-check against llama.cpp itself: our logits vs llama-cpp-python's on the same files.

Not part of the test suite (llama.cpp is not a dependency). Needs a Python with
`llama-cpp-python` installed, e.g. a separate venv:

    python -m venv /tmp/lcpp && /tmp/lcpp/bin/pip install llama-cpp-python numpy
    python benches/llama_cpp_parity.py --llama-python /tmp/lcpp/bin/python

It writes tiny random models with tests/factory.py (plus the bundled model), evaluates
8 tokens with both engines (all logits), and prints max |difference| and top-1 agreement.
llama.cpp rounds activations to f16 in attention (F16 cache) and to Q8 for quantized
weights, so differences of ~1e-3 relative (float) and ~1e-2 relative (quantized) are expected.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from factory import TinySpec, write_tiny_model  # noqa: E402

import hotlora  # noqa: E402

TOKENS = [1, 5, 9, 33, 100, 7, 2, 40]
SPECS = {"bundled": None, "f32": TinySpec(), "qwen2_tied": TinySpec(arch="qwen2", tied=True),
         "llama3_rope": TinySpec(rope_freqs=True), "q8_0": TinySpec(weight_type="Q8_0"),
         "q4_k": TinySpec(weight_type="Q4_K"), "q6_k": TinySpec(weight_type="Q6_K")}

LLAMA_SIDE = """
import json, sys, numpy as np
from llama_cpp import Llama
jobs = json.load(open(sys.argv[1]))
for name, (path, out) in jobs.items():
    llm = Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(TOKENS)
    np.save(out, np.array(llm.scores[:len(TOKENS)]))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True, help="a python with llama-cpp-python installed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    jobs, ours = {}, {}
    for name, spec in SPECS.items():
        path = hotlora.model.default_model_path() if spec is None else write_tiny_model(work / f"{name}.gguf", spec)
        with hotlora.Model(path, n_ctx=64) as m:
            ours[name] = m.eval(TOKENS)
        jobs[name] = (str(path), str(work / f"{name}.npy"))
    (work / "jobs.json").write_text(json.dumps(jobs))
    script = f"TOKENS = {TOKENS}\n" + LLAMA_SIDE
    subprocess.run([args.llama_python, "-c", script, str(work / "jobs.json")], check=True, capture_output=True)
    print("| model | max abs diff | max abs logit | top-1 agreement |\n|---|---:|---:|---:|")
    for name in SPECS:
        theirs = np.load(jobs[name][1])
        diff = np.abs(theirs - ours[name]).max()
        agree = (theirs.argmax(-1) == ours[name].argmax(-1)).mean()
        print(f"| {name} | {diff:.4f} | {np.abs(ours[name]).max():.2f} | {agree:.2f} |")


if __name__ == "__main__":
    main()
