"""Seeded mutation fuzzer for models, adapters and vocabularies, run in long-lived worker processes.

    python benches/fuzz.py --kind model|adapter|tokenizer --cases N --seed S --workers W --out DIR
                           [--valid FILE ...] [--model FILE] [--timeout 10] [--max-rss-mb 1024]
    python benches/fuzz.py --replay DIR/CASE.gguf

Case i mutates valid file i % len(--valid) with an rng seeded by (S, i) (tests/fuzz_mutations.py), then loads it:
a model is loaded (hotlora.Model) and decodes two tokens; an adapter is loaded into the --model loaded once per
worker, made active and decodes two tokens; a vocabulary is loaded (hotlora.Tokenizer) and round-trips a text.
Each case must load or be refused with a one-line HotLoraError. Bad cases: a worker killed by a signal or
exiting (crash; the worker is restarted), any other exception (traceback), a case over --timeout seconds
(timeout; restarted), a worker over --max-rss-mb resident memory or a MemoryError / C out-of-memory error
(over-memory). Each bad case is saved in DIR with a .json of its seed, index, mutation and error, and replays
with --replay. Without --valid, tiny valid files are written into DIR with tests/factory.py. Prints the counts
and cases/s; exit status 1 if there is any bad case.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_mutations  # noqa: E402

OUTCOMES = ("loaded", "refused", "crash", "traceback", "timeout", "over-memory")
BAD = OUTCOMES[2:]
READY_TIMEOUT_S = 300   # a worker's start-up (imports, loading the model), slow under the sanitizers
PROGRESS_EVERY_S = 30


# ---- valid inputs ---------------------------------------------------------------------------------------

def write_valid_files(kind: str, out: Path) -> tuple[list[Path], Path | None]:
    """Tiny valid files to mutate, and the model adapters are loaded into."""
    from factory import TinySpec, tiny_adapter_pairs, write_ggla_adapter, write_tiny_adapter, write_tiny_model

    spec = TinySpec(n_embd=32, n_layer=1, n_ff=32, n_head=2, n_head_kv=1, weight_type="Q8_0")
    model = write_tiny_model(out / "valid-model-q8_0.gguf", spec)
    if kind == "model":
        f16 = replace(spec, weight_type="F16", tied=True, biases=True)
        return [model, write_tiny_model(out / "valid-model-f16-tied.gguf", f16)], model
    if kind == "tokenizer":
        return [model], None
    targets = ["attn_q", "ffn_down", "output", "token_embd"]
    gguf_adapter = write_tiny_adapter(out / "valid-adapter.gguf", spec, targets, rank=4, alpha=8.0)
    ggla_adapter = write_ggla_adapter(out / "valid-adapter.bin", tiny_adapter_pairs(spec, targets, rank=4),
                                      alpha=8, rank_header=4)
    return [gguf_adapter, ggla_adapter], model


def make_case(valid: list[Path], seed: int, index: int) -> tuple[bytes, str, Path]:
    """Case `index`: the mutated bytes, what was done, and the valid file it came from."""
    source = valid[index % len(valid)]
    data = source.read_bytes()
    mutated, what = fuzz_mutations.mutate(data, fuzz_mutations.layout(data), fuzz_mutations.case_rng(seed, index))
    return mutated, what, source


# ---- one case (in a worker, or in this process for --replay) ----------------------------------------------

def case_runner(kind: str, model_path: Path | None):
    """A function that loads one case file and uses it (raises what the loader raises)."""
    import hotlora

    if kind == "model":
        def run(path: Path) -> None:
            with hotlora.Model(path, n_ctx=16, n_threads=1, n_batch=4) as m:
                m.eval([0, min(1, m.n_vocab - 1)])
                m.detokenize(m.tokenize("fuzz <|endoftext|> test"))
    elif kind == "adapter":
        model = hotlora.Model(model_path, n_ctx=16, n_threads=1, n_batch=4)

        def run(path: Path) -> None:
            adapter = model.load_adapter(path)
            try:
                model.set_adapters({adapter: 1.0})
                model.reset()
                model.eval([0, 1])
            finally:
                model.unload_adapter(adapter)
    else:
        def run(path: Path) -> None:
            tok = hotlora.Tokenizer(path)
            tok.detokenize(tok.tokenize("fuzz <|endoftext|> t\u00e9st \U0001F999"))
    return run


def run_case(run, path: Path) -> tuple[str, str]:
    """(outcome, detail): loaded, refused with a one-line HotLoraError, traceback or over-memory."""
    from hotlora import HotLoraError

    try:
        run(path)
        return "loaded", ""
    except HotLoraError as e:
        message = str(e)
        if not message or "\n" in message:
            return "traceback", f"HotLoraError message is not one line: {message!r}"
        return ("over-memory" if "out of memory" in message else "refused"), message
    except MemoryError:
        return "over-memory", traceback.format_exc()
    except Exception:
        return "traceback", traceback.format_exc()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def worker_main(args) -> None:
    """Reads case indices on stdin, answers one JSON line per case on the original stdout."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything else printed goes to the worker's log, not into the replies
    valid = [Path(p) for p in args.valid]
    run = case_runner(args.kind, args.model)
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        index = int(line)
        data, _, source = make_case(valid, args.seed, index)
        case_file = Path(args.work) / f"case{source.suffix}"
        case_file.write_bytes(data)
        outcome, detail = run_case(run, case_file)
        if outcome in ("loaded", "refused") and peak_rss_mb() > args.max_rss_mb:
            outcome, detail = "over-memory", f"peak RSS {peak_rss_mb():.0f} MB"
        replies.write(json.dumps({"index": index, "outcome": outcome, "detail": detail}) + "\n")
        if outcome == "over-memory":
            return   # a fresh worker starts from a fresh peak


# ---- the campaign -------------------------------------------------------------------------------------------

@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    index: int | None = None        # the case in progress
    deadline: float = 0.0


@dataclass
class Campaign:
    args: argparse.Namespace
    valid: list[Path]
    work: Path
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    next_index: int = 0
    n_started: int = 0

    def start_worker(self) -> Worker:
        a = self.args
        self.n_started += 1
        log = a.out / f"worker-{self.n_started}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--kind", a.kind, "--seed", str(a.seed),
                   "--max-rss-mb", str(a.max_rss_mb), "--work", str(tempfile.mkdtemp(dir=self.work)),
                   *(x for p in self.valid for x in ("--valid", str(p))), *(["--model", str(a.model)] * bool(a.model))]
        with open(log, "w") as stderr:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
        worker = Worker(proc, log)
        ready = self._read_line(worker, time.monotonic() + READY_TIMEOUT_S)
        if not ready:
            proc.kill()
            sys.exit(f"error: a fuzz worker did not start; its log {log}:\n{log.read_text()[-3000:]}")
        return worker

    def _read_line(self, worker: Worker, deadline: float) -> dict | None:
        with selectors.DefaultSelector() as sel:
            sel.register(worker.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                return None
        line = worker.proc.stdout.readline()
        return json.loads(line) if line else None

    def assign(self, worker: Worker) -> None:
        worker.index, worker.deadline = self.next_index, time.monotonic() + self.args.timeout
        self.next_index += 1
        worker.proc.stdin.write(f"{worker.index}\n")
        worker.proc.stdin.flush()

    def record(self, index: int, outcome: str, detail: str) -> None:
        self.counts[outcome] += 1
        if outcome in BAD:
            self.save(index, outcome, detail)

    def save(self, index: int, outcome: str, detail: str) -> None:
        a = self.args
        data, what, source = make_case(self.valid, a.seed, index)
        path = a.out / f"{a.kind}-{outcome}-seed{a.seed}-case{index}{source.suffix}"
        path.write_bytes(data)
        info = {"kind": a.kind, "seed": a.seed, "index": index, "valid": str(source.resolve()),
                "model": str(Path(a.model).resolve()) if a.model else None, "mutation": what,
                "outcome": outcome, "detail": detail}
        path.with_name(path.name + ".json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"{outcome}: case {index} ({what}) saved as {path}", file=sys.stderr)

    def replace_worker(self, worker: Worker, outcome: str, detail: str) -> Worker:
        """Records the worker's case as bad, ends the worker and starts another."""
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        log_tail = worker.log.read_text(errors="replace")[-4000:]
        self.record(worker.index, outcome, f"{detail}\n{log_tail}".strip())
        return self.start_worker()

    def step(self, workers: list[Worker]) -> None:
        """Waits for one reply, death or deadline, polling memory; handles it."""
        with selectors.DefaultSelector() as sel:
            for w in workers:
                if w.index is not None:
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            soonest = min(w.deadline for w in workers if w.index is not None)
            ready = sel.select(min(0.2, max(0.0, soonest - time.monotonic())))
        for key, _ in ready:
            w = key.data
            reply = self._read_line(w, time.monotonic() + 5)
            if reply is None:
                code = w.proc.wait()
                detail = f"worker killed by signal {-code}" if code < 0 else f"worker exited with status {code}"
                workers[workers.index(w)] = self.replace_worker(w, "crash", detail)
                continue
            self.record(reply["index"], reply["outcome"], reply["detail"])
            w.index = None
            if reply["outcome"] == "over-memory":   # the worker has exited: its peak RSS was spent
                w.proc.wait()
                workers[workers.index(w)] = self.start_worker()
        self.check_limits(workers)

    def check_limits(self, workers: list[Worker]) -> None:
        now = time.monotonic()
        for i, w in enumerate(workers):
            if w.index is None:
                continue
            if now > w.deadline:
                workers[i] = self.replace_worker(w, "timeout", f"over {self.args.timeout} s")
            elif rss_mb(w.proc.pid) > self.args.max_rss_mb:
                workers[i] = self.replace_worker(w, "over-memory", f"RSS over {self.args.max_rss_mb} MB")

    def run(self) -> float:
        start = last_report = time.monotonic()
        workers = [self.start_worker() for _ in range(self.args.workers)]
        while True:
            for w in workers:
                if w.index is None and self.next_index < self.args.cases:
                    self.assign(w)
            if all(w.index is None for w in workers):
                break
            self.step(workers)
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                last_report = time.monotonic()
                self.report_progress(last_report - start)
        for w in workers:
            w.proc.stdin.close()
            w.proc.wait()
        for log in self.args.out.glob("worker-*.log"):
            if log.stat().st_size == 0:
                log.unlink()
        return time.monotonic() - start


    def report_progress(self, seconds: float) -> None:
        done = sum(self.counts.values())
        print(f"{done}/{self.args.cases} cases, {sum(self.counts[o] for o in BAD)} bad, "
              f"{done / seconds:.1f} cases/s", file=sys.stderr)


def rss_mb(pid: int) -> float:
    """A live process's resident memory (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((s for s in status.splitlines() if s.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


# ---- command line ---------------------------------------------------------------------------------------------

def replay(args) -> int:
    """Runs one saved case in this process (a crash crashes it) and says what happened."""
    info_path = args.replay.with_name(args.replay.name + ".json")
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    kind = info.get("kind", args.kind)
    model = args.model or (Path(info["model"]) if info.get("model") else None)
    run = case_runner(kind, model)
    start = time.monotonic()
    outcome, detail = run_case(run, args.replay)
    print(f"{outcome} in {time.monotonic() - start:.2f} s, peak RSS {peak_rss_mb():.0f} MB: {detail}")
    return 1 if outcome in BAD else 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("model", "adapter", "tokenizer"), default="model")
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("fuzz-out"))
    p.add_argument("--valid", type=Path, action="append", help="a valid file to mutate (repeatable)")
    p.add_argument("--model", type=Path, help="the model adapters are loaded into")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    p.add_argument("--max-rss-mb", type=float, default=1024.0)
    p.add_argument("--replay", type=Path, help="run one saved case here and report")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers < 1 or args.cases < 0:
        p.error("--workers must be at least 1 and --cases not negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    if args.replay:
        return replay(args)
    args.out.mkdir(parents=True, exist_ok=True)
    valid = args.valid
    if not valid or (args.kind == "adapter" and args.model is None):
        written, model = write_valid_files(args.kind, args.out)
        valid, args.model = valid or written, args.model or model
    with tempfile.TemporaryDirectory(prefix="hotlora-fuzz-") as work:
        campaign = Campaign(args, valid, Path(work))
        seconds = campaign.run()
    c = campaign.counts
    print(f"{args.kind}: {args.cases} cases in {seconds:.1f} s ({args.cases / seconds:.1f} cases/s), "
          f"{args.workers} workers, seed {args.seed}")
    print(f"loaded {c['loaded']}, refused {c['refused']}, crashes {c['crash']}, tracebacks {c['traceback']}, "
          f"timeouts {c['timeout']}, over-memory {c['over-memory']}")
    n_bad = sum(c[o] for o in BAD)
    if n_bad:
        print(f"{n_bad} bad cases saved in {args.out}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
