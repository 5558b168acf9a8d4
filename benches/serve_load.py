"""Load test of `hotlora serve`: N concurrent clients over K adapters, against one adapter and one at a time.

Starts one server (all adapters loaded at launch, global scale 0), then runs, interleaved for --rounds rounds:

* `mixed`: N clients at once, client i on adapter i mod K;
* `one adapter`: N clients at once, all on adapter 0;
* `sequential`: the same N requests as `mixed`, one after another.

Each request streams --tokens tokens (greedy, end of generation ignored) after a prompt of --prompt-tokens
token ids. Every scenario run (and the warm-up) gets prompts of its own, windows of the corpus no earlier
run used, so that no server's prompt cache answers one from an earlier run: the ratios measure batching.
Reported per scenario (medians over rounds): aggregate tokens/s end to end (completion tokens / wall time of the
scenario, prefill included), aggregate decode tokens/s (the tokens after each request's first / the time during
which some request was between its first and last token), time to first token and request latency p50/p90, and
the issue-9 ratios, both ways: mixed against what the bytes allow (one-adapter throughput × (base + 1 adapter
bytes) / (base + K adapter bytes)) and against sequential.

    python benches/serve_load.py -m MODEL.gguf --adapters A1.gguf,...,A8.gguf --clients 8 --tokens 64

With --llama-server PATH, llama.cpp's server runs the same three scenarios on the same files (same options:
-np, -c, -t, every adapter loaded with --lora-init-without-apply, the same request bodies with per-request
"lora"), its rounds interleaved with hotlora's, both servers up for the whole run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(args, engine: str, port: int) -> list[str]:
    """The command line of one engine's server with the model, every adapter (at scale 0) and -np clients."""
    program = [sys.executable, "-m", "hotlora", "serve"] if engine == "hotlora" else [args.llama_server]
    cmd = program + ["-m", args.model, "--port", str(port), "-c", str(args.ctx), "-np", str(args.clients),
                     "-t", str(args.threads), "--lora-init-without-apply"]
    for adapter in args.adapters:
        cmd += ["--lora", adapter]
    return cmd


def start_server(cmd: list[str], port: int) -> subprocess.Popen:
    """The server, once /health answers. Its log goes to a file: llama-server writes a line per adapter tensor,
    more than a pipe holds, and would block on a pipe nobody reads."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    log.seek(0)
    sys.exit(f"{cmd[0]} did not start: {log.read()[-2000:]}")


def one_request(client: httpx.Client, base: str, prompt: list[int], adapter: int, n_tokens: int) -> dict:
    """One streamed completion (n_tokens tokens: the end of generation is ignored): its start, the arrivals of
    its first and last chunks and its end (perf_counter)."""
    body = {"prompt": prompt, "max_tokens": n_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "lora": [{"id": adapter, "scale": 1.0}]}
    start, first, last = time.perf_counter(), 0.0, 0.0
    with client.stream("POST", f"{base}/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if not chunk.get("choices"):  # llama-server's closing chunk of usage and timings
                continue
            last = time.perf_counter()
            first = first or last
    return {"start": start, "first": first, "last": last, "end": time.perf_counter()}


def decode_rate(requests: list[dict], n_tokens: int) -> float:
    """Aggregate decode throughput: the tokens after each request's first, over the time during which some
    request was between its first and its last token (the union of those intervals)."""
    busy, reach = 0.0, float("-inf")
    for r in sorted(requests, key=lambda r: r["first"]):
        busy += max(0.0, r["last"] - max(r["first"], reach))
        reach = max(reach, r["last"])
    return len(requests) * (n_tokens - 1) / busy


def scenario(client: httpx.Client, base: str, prompts: list[list[int]], adapters: list[int], n_tokens: int,
             together: bool) -> dict:
    start = time.perf_counter()
    if together:
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda pa: one_request(client, base, pa[0], pa[1], n_tokens),
                                    zip(prompts, adapters)))
    else:
        results = [one_request(client, base, p, a, n_tokens) for p, a in zip(prompts, adapters)]
    wall = time.perf_counter() - start
    return {"tokens_per_s": n_tokens * len(prompts) / wall, "decode_tokens_per_s": decode_rate(results, n_tokens),
            "ttft": [r["first"] - r["start"] for r in results], "latency": [r["end"] - r["start"] for r in results]}


def prompt_sets(client: httpx.Client, base: str, n_sets: int, n: int, n_tokens: int) -> list[list[list[int]]]:
    """n_sets sets of n prompts of n_tokens tokens, all different: windows of the tokenized project corpus
    (data/corpus.txt), read over again (shifted by half a window) if it runs out."""
    text = (Path(__file__).resolve().parent.parent / "data" / "corpus.txt").read_text(encoding="utf-8")
    ids = client.post(f"{base}/tokenize", json={"content": text}).json()["tokens"]
    windows = [ids[i:i + n_tokens] for shift in (0, n_tokens // 2)
               for i in range(shift, len(ids) - n_tokens + 1, n_tokens)]
    if len(windows) < n_sets * n:
        sys.exit(f"error: data/corpus.txt gives {len(windows)} prompts of {n_tokens} tokens; "
                 f"this run needs {n_sets * n}")
    return [windows[k * n:(k + 1) * n] for k in range(n_sets)]


def summary(runs: list[dict]) -> dict:
    ttft = [t for r in runs for t in r["ttft"]]
    latency = [t for r in runs for t in r["latency"]]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
            "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)), "ttft_p90_ms": 1e3 * float(np.percentile(ttft, 90)),
            "latency_p50_ms": 1e3 * float(np.percentile(latency, 50)),
            "latency_p90_ms": 1e3 * float(np.percentile(latency, 90))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--adapters", required=True, type=lambda s: s.split(","))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ctx", type=int, default=0, help="server -c (default: clients × (prompt + tokens + 8))")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary: run the same load against it too")
    args = ap.parse_args()
    args.ctx = args.ctx or args.clients * (args.prompt_tokens + args.tokens + 8)
    engines = ["hotlora"] + (["llama-server"] if args.llama_server else [])
    servers, bases = [], {}
    try:
        for engine in engines:
            port = free_port()
            servers.append(start_server(server_command(args, engine, port), port))
            bases[engine] = f"http://127.0.0.1:{port}"
        runs = run_rounds(args, bases)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    for engine in engines:
        report(args, engine, {name: summary(r) for name, r in runs[engine].items()})


def run_rounds(args, bases: dict[str, str]) -> dict[str, dict[str, list[dict]]]:
    """Every engine's three scenarios, interleaved round by round, after one warm-up each. One HTTP client serves
    every request: a client per request (httpx.stream) built an SSL context each time, about 60 % of this
    process's CPU, taken from the server's cores. Each request still opens its own connection, as before: an idle
    kept-alive one may be closed by the server just as it is reused."""
    mixed = [i % len(args.adapters) for i in range(args.clients)]
    plans = {"mixed": (mixed, True), "one adapter": ([0] * args.clients, True), "sequential": (mixed, False)}
    with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        sets = iter(prompt_sets(client, bases["hotlora"], 1 + args.rounds * len(plans), args.clients,
                                args.prompt_tokens))
        warm_up = next(sets)
        for base in bases.values():
            scenario(client, base, warm_up, mixed, 4, True)
        runs = {engine: {name: [] for name in plans} for engine in bases}
        for _ in range(args.rounds):
            for name, (adapters, together) in plans.items():
                prompts = next(sets)  # the same prompts for every engine, new to each
                for engine, base in bases.items():
                    runs[engine][name].append(scenario(client, base, prompts, adapters, args.tokens, together))
    return runs


def report(args, engine: str, results: dict[str, dict]) -> None:
    print(f"\n{engine}: model {Path(args.model).name}, {len(args.adapters)} adapters, {args.clients} clients, "
          f"{args.prompt_tokens}-token prompts, {args.tokens} tokens each, {args.threads} threads, "
          f"{args.rounds} rounds (medians)\n")
    print("| scenario | tokens/s | decode tokens/s | TTFT p50 | TTFT p90 | latency p50 | latency p90 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} ms | "
              f"{r['ttft_p90_ms']:.0f} ms | {r['latency_p50_ms']:.0f} ms | {r['latency_p90_ms']:.0f} ms |")
    base_bytes = Path(args.model).stat().st_size
    adapter_bytes = [Path(a).stat().st_size for a in args.adapters]
    share = (base_bytes + adapter_bytes[0]) / (base_bytes + sum(adapter_bytes))
    for key, label in (("tokens_per_s", "end to end"), ("decode_tokens_per_s", "decode")):
        allowed = results["one adapter"][key] * share
        print(f"\n{label}: mixed / bytes-allowed ({allowed:.1f} tokens/s): {results['mixed'][key] / allowed:.2f}x; "
              f"mixed / sequential: {results['mixed'][key] / results['sequential'][key]:.2f}x")


if __name__ == "__main__":
    main()
