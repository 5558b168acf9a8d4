"""LoRA on the command line, in subprocesses as a user runs it: `hotlora run --hot-lora/--hot-lora-scaled`
(aliases `--lora`/`--lora-scaled`, `--lora-keep-cache`, `"adapters"` in `--json`), bad adapters (one
`error: ...` line naming the tensor, exit 1, no traceback) and `hotlora graph` (Graphviz DOT, LoRA nodes marked
`lora=1` with the projection name in the label).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import hotlora as hl

from factory import (ADAPTER_TARGETS, TinySpec, tiny_adapter_pairs, write_adapter_file, write_ggla_adapter,
                     write_tiny_adapter, write_tiny_model)
from cli_util import assert_one_line_error, hotlora

PROMPT = "the cat sat on"
SPEC = TinySpec()   # llama, 2 layers, n_embd 64, n_head 4 (q: ne [64, 64]), n_head_kv 2 (k: ne [64, 32])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_cli")
    return {
        "model": write_tiny_model(tmp / "model.gguf", SPEC),
        "tied": write_tiny_model(tmp / "tied.gguf", TinySpec(tied=True)),
        "adapter": write_tiny_adapter(tmp / "adapter.gguf", SPEC, ADAPTER_TARGETS, alpha=16.0, seed=1),
        "other": write_tiny_adapter(tmp / "other.gguf", SPEC, ("attn_v", "ffn_up"), alpha=16.0, seed=2),
        "dir": tmp,
    }


def run_on(model, *extra):
    return hotlora("run", "-m", model, "-p", PROMPT, "-n", "2", "--temp", "0", "--no-warmup", *extra)


def run_json(model, *extra, n=8):
    proc = hotlora("run", "-m", model, "-p", PROMPT, "-n", n, "--temp", "0", "--ignore-eos", "--json",
                   "--cache-type", "f32", "--no-warmup", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ----------------------------------------------------------------------------------------------------------
# Bad adapters
# ----------------------------------------------------------------------------------------------------------

def pair_tensors(name: str, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """numpy orientation: a projection's a is (r, n_in) [ne n_in, r], b (n_out, r) [ne r, n_out]."""
    return {name + ".lora_a": a, name + ".lora_b": b}


def good_pair(name="blk.0.attn_q.weight", n_out=64, n_in=64, rank=4):
    rng = np.random.default_rng(0)
    return pair_tensors(name, rng.normal(0, 0.1, (rank, n_in)), rng.normal(0, 0.1, (n_out, rank)))


def bad_adapter(files, name: str, tensors: dict[str, np.ndarray], arch="llama", **kw):
    return write_adapter_file(files["dir"] / name, arch, {**good_pair("blk.1.ffn_up.weight", 96, 64), **tensors}, **kw)


def test_wrong_arch(files):
    path = write_tiny_adapter(files["dir"] / "qwen.gguf", TinySpec(arch="qwen2"), ("attn_q",))
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, "arch mismatch")


def test_not_an_adapter_general_type(files):
    assert_one_line_error(run_on(files["model"], "--hot-lora", files["model"]), 1,
                          "expect general.type to be 'adapter'")


def test_adapter_type_not_lora(files):
    path = bad_adapter(files, "ia3.gguf", {}, adapter_type="ia3")
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, "adapter.type")


def test_norm_pair_is_refused(files):
    """A pair on a norm weight: the base exists but is never multiplied through a LoRA-aware product."""
    name = "blk.0.attn_norm.weight"
    path = bad_adapter(files, "norm.gguf", pair_tensors(name, np.ones((4, 64)), np.ones((1, 4))))
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name, any_of=("unexpected", "not adapt"))


def test_bad_suffix(files):
    name = "blk.0.attn_q.weight.lora_x"
    path = bad_adapter(files, "suffix.gguf", {name: np.ones((4, 64))})
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name, "unexpected")


def test_nonsense_name(files):
    name = "blk.0.attn_qq.weight"
    path = bad_adapter(files, "nonsense.gguf", good_pair(name))
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name,
                          any_of=("unexpected", "not adapt", "does not exist in base model"))


def test_missing_half(files):
    name = "blk.0.attn_q.weight"
    path = bad_adapter(files, "half.gguf", {name + ".lora_a": good_pair(name)[name + ".lora_a"]})
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name, "missing one component")


def test_rank_mismatch(files):
    name = "blk.0.attn_v.weight"
    rng = np.random.default_rng(1)
    path = bad_adapter(files, "rank.gguf", pair_tensors(name, rng.normal(size=(4, 64)), rng.normal(size=(32, 8))))
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name, "rank")


@pytest.mark.parametrize("half", ["lora_a", "lora_b"])
def test_shape_not_fitting_the_base(files, half):
    """attn_k is ne [64, 32]; a lora_a of ne [96, 4] or a lora_b of ne [4, 48] does not fit."""
    name = "blk.1.attn_k.weight"
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 96 if half == "lora_a" else 64))
    b = rng.normal(size=(48 if half == "lora_b" else 32, 4))
    path = bad_adapter(files, f"shape_{half}.gguf", pair_tensors(name, a, b))
    bad_shape = "[96, 4]" if half == "lora_a" else "[4, 48]"
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name, "incorrect shape", "[64, 32]",
                          bad_shape)


def test_layer_not_in_model(files):
    name = "blk.99.attn_q.weight"
    path = bad_adapter(files, "layer99.gguf", good_pair(name))
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, name, "does not exist in base model")


def test_output_pair_on_tied_model_is_accepted(files):
    path = write_tiny_adapter(files["dir"] / "tied_out.gguf", TinySpec(tied=True), ("output", "token_embd"))
    proc = run_on(files["tied"], "--hot-lora", path)
    assert proc.returncode == 0, proc.stderr


def test_missing_file(files):
    missing = files["dir"] / "nope.gguf"
    assert_one_line_error(run_on(files["model"], "--hot-lora", missing), 1, str(missing))


def test_not_a_gguf(files):
    path = files["dir"] / "text.gguf"
    path.write_text("hello, I am not an adapter")
    assert_one_line_error(run_on(files["model"], "--lora", path), 1, str(path))


def test_ggla_bad_version(files):
    path = write_ggla_adapter(files["dir"] / "v2.bin", tiny_adapter_pairs(SPEC, ("attn_q",)), alpha=8, rank_header=4)
    data = bytearray(path.read_bytes())
    data[4:8] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert_one_line_error(run_on(files["model"], "--hot-lora", path), 1, str(path))


def test_bad_scale_is_a_usage_error(files):
    proc = run_on(files["model"], "--hot-lora-scaled", files["adapter"], "strong")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------------------------
# run with adapters
# ----------------------------------------------------------------------------------------------------------

def test_json_lists_adapters(files):
    result = run_json(files["model"], "--hot-lora", files["adapter"])
    assert len(result["adapters"]) == 1
    entry = result["adapters"][0]
    assert isinstance(entry["id"], int) and entry["path"] == str(files["adapter"]) and entry["scale"] == 1.0
    assert run_json(files["model"])["adapters"] == []


def test_scaled_and_aliases(files):
    a, b = str(files["adapter"]), str(files["other"])
    scaled = run_json(files["model"], "--hot-lora-scaled", a, "0.5")
    assert [(e["path"], e["scale"]) for e in scaled["adapters"]] == [(a, 0.5)]
    alias = run_json(files["model"], "--lora-scaled", a, "0.5")
    assert alias["adapters"] == scaled["adapters"] and alias["tokens"] == scaled["tokens"]
    plain = run_json(files["model"], "--lora", a)
    assert [(e["path"], e["scale"]) for e in plain["adapters"]] == [(a, 1.0)]
    assert plain["tokens"] == run_json(files["model"], "--hot-lora", a)["tokens"]
    both = run_json(files["model"], "--hot-lora", a, "--hot-lora-scaled", b, "-0.25")
    assert sorted((e["path"], e["scale"]) for e in both["adapters"]) == sorted([(a, 1.0), (b, -0.25)])
    assert len({e["id"] for e in both["adapters"]}) == 2
    repeated = run_json(files["model"], "--hot-lora", a, "--hot-lora", b)
    assert [e["path"] for e in repeated["adapters"]] == [a, b]


def test_scale_zero_gives_the_base_tokens(files):
    base = run_json(files["model"])
    assert run_json(files["model"], "--hot-lora-scaled", files["adapter"], "0")["tokens"] == base["tokens"]
    assert run_json(files["model"], "--hot-lora", files["adapter"])["tokens"] != base["tokens"]


def test_cli_tokens_equal_library_greedy(files):
    cli = run_json(files["model"], "--hot-lora-scaled", files["adapter"], "0.5", "--lora-keep-cache")
    with hl.Model(files["model"], n_ctx=64, n_threads=2, cache_type="f32") as m:
        m.set_adapters({m.load_adapter(files["adapter"]): 0.5})
        logits = m.eval_last(cli["prompt_tokens"])
        tokens = []
        for _ in range(len(cli["tokens"])):
            tokens.append(int(np.argmax(logits)))
            logits = m.eval_last([tokens[-1]])
    assert cli["tokens"] == tokens


def test_ggla_on_the_command_line(files):
    path = write_ggla_adapter(files["dir"] / "same.bin", tiny_adapter_pairs(SPEC, ADAPTER_TARGETS, seed=1),
                              alpha=16, rank_header=4)
    ggla = run_json(files["model"], "--hot-lora", path)
    assert ggla["tokens"] == run_json(files["model"], "--hot-lora", files["adapter"])["tokens"]
    assert ggla["adapters"][0]["path"] == str(path)


# ----------------------------------------------------------------------------------------------------------
# hotlora graph
# ----------------------------------------------------------------------------------------------------------

TOKEN_RE = re.compile(r'''
    (?P<space>\s+|//[^\n]*|\#[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<id>-?(?:\.\d+|\d+(?:\.\d*)?)|[A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)
  | (?P<op>->|--|[{}\[\]=;,:])
''', re.S | re.X)


def dot_tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        assert m, f"DOT: cannot tokenize at {text[pos:pos + 40]!r}"
        pos = m.end()
        if m.lastgroup == "string":
            out.append(("S", re.sub(r'\\(.)', lambda e: "\n" if e.group(1) in "nlr" else e.group(1), m.group()[1:-1])))
        elif m.lastgroup in ("id", "op"):
            out.append(("I" if m.lastgroup == "id" else "O", m.group()))
    return out


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """A small DOT parser (graph, digraph, subgraphs, attribute lists, edge chains; no HTML labels).
    -> (node id -> attributes, [(tail, head), ...]); asserts the text is well formed."""
    toks, i = dot_tokens(text), 0
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str]] = []

    def peek(k=0):
        return toks[i + k] if i + k < len(toks) else (None, None)

    def take(kind=None, value=None):
        nonlocal i
        tok = peek()
        assert tok[0] is not None, "DOT: unexpected end"
        assert (kind is None or tok[0] == kind or (kind == "ID" and tok[0] in ("I", "S"))) and \
            (value is None or tok[1] == value), f"DOT: expected {value or kind}, got {tok[1]!r}"
        i += 1
        return tok[1]

    def attr_list() -> dict[str, str]:
        attrs = {}
        while peek() == ("O", "["):
            take()
            while peek() != ("O", "]"):
                key = take("ID")
                take("O", "=")
                attrs[key] = take("ID")
                if peek() in (("O", ","), ("O", ";")):
                    take()
            take("O", "]")
        return attrs

    def node_id() -> str:
        name = take("ID")
        if peek() == ("O", ":"):      # port
            take()
            take("ID")
        return name

    def stmt_list():
        take("O", "{")
        while peek() != ("O", "}"):
            stmt()
            if peek() == ("O", ";"):
                take()
        take("O", "}")

    def operand() -> list[str]:
        if peek() == ("I", "subgraph") or peek() == ("O", "{"):
            before = set(nodes)
            if peek() == ("I", "subgraph"):
                take()
                if peek()[0] in ("I", "S"):
                    take("ID")
            stmt_list()
            return [n for n in nodes if n not in before]
        name = node_id()
        nodes.setdefault(name, {})
        return [name]

    def stmt():
        if peek()[0] == "I" and peek()[1] in ("graph", "node", "edge") and peek(1) == ("O", "["):
            take()
            attr_list()
            return
        if peek(1) == ("O", "=") and peek()[0] in ("I", "S"):
            take()
            take()
            take("ID")
            return
        tails = operand()
        if peek() in (("O", "->"), ("O", "--")):
            while peek() in (("O", "->"), ("O", "--")):
                take()
                heads = operand()
                edges.extend((t, h) for t in tails for h in heads)
                tails = heads
            attr_list()
        else:
            attrs = attr_list()
            for name in tails:
                nodes[name].update(attrs)

    if peek() == ("I", "strict"):
        take()
    assert take("I") in ("digraph", "graph")
    if peek() != ("O", "{"):
        take("ID")
    stmt_list()
    assert i == len(toks), "DOT: text after the closing brace"
    return nodes, edges


PROJECTION_RE = re.compile(r"blk\.\d+\.(?:attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)(?![A-Za-z_])"
                           r"|token_embd|(?<![A-Za-z_.])output(?![A-Za-z_])")


def lora_projections(nodes) -> list[str]:
    """The projection named by each LoRA node (exactly one name per node)."""
    out = []
    for name, attrs in nodes.items():
        if attrs.get("lora") == "1":
            found = set(PROJECTION_RE.findall(attrs.get("label", name)))
            assert len(found) == 1, (name, attrs)
            out.append(found.pop())
    return sorted(out)


def layers_shown(nodes) -> set[int]:
    return {int(n) for attrs in nodes.values() for n in re.findall(r"blk\.(\d+)\.", attrs.get("label", ""))}


def test_dot_parser_self_check():
    nodes, edges = parse_dot('digraph g { rankdir=LR; node [shape=box]; a [label="blk.0.attn_q\\nlora", lora=1];'
                             ' b; a -> b -> c [color=red]; subgraph cluster_0 { d [label="x"] } }')
    assert nodes["a"] == {"label": "blk.0.attn_q\nlora", "lora": "1"} and set(nodes) == {"a", "b", "c", "d"}
    assert edges == [("a", "b"), ("b", "c")]
    assert lora_projections(nodes) == ["blk.0.attn_q"]
    with pytest.raises(AssertionError):
        parse_dot("digraph g { a -> }")


def graph_of(files, model, *extra):
    out = files["dir"] / f"graph{len(list(files['dir'].glob('graph*.dot')))}.dot"
    proc = hotlora("graph", "-m", model, "-o", out, *extra)
    assert proc.returncode == 0, proc.stderr
    nodes, edges = parse_dot(out.read_text())
    assert nodes and edges
    return nodes, edges


def expected_lora(targets, layers, whole_model: bool) -> list[str]:
    """The LoRA nodes a graph of `layers` (plus the embedding and head when it is the whole model) must have."""
    names = []
    for target in targets:
        if target in ("output", "token_embd"):
            names += [target] if whole_model else []
        else:
            names += [f"blk.{il}.{target}" for il in sorted(layers)]
    return sorted(names)


def test_graph_default_is_block_0(files):
    nodes, _ = graph_of(files, files["model"], "--hot-lora", files["adapter"])
    assert layers_shown(nodes) == {0}
    assert lora_projections(nodes) == expected_lora(ADAPTER_TARGETS, {0}, whole_model=False)


def test_graph_all_marks_one_lora_node_per_adapted_projection(files):
    nodes, _ = graph_of(files, files["model"], "--hot-lora", files["adapter"], "--all")
    assert layers_shown(nodes) == {0, 1}
    assert lora_projections(nodes) == expected_lora(ADAPTER_TARGETS, {0, 1}, whole_model=True)
    assert len(lora_projections(nodes)) == 2 * 7 + 2


def test_graph_partial_adapter_and_no_adapter(files):
    nodes, _ = graph_of(files, files["model"], "--hot-lora", files["other"], "--tokens", "3", "--all")
    assert lora_projections(nodes) == expected_lora(("attn_v", "ffn_up"), {0, 1}, whole_model=True)
    nodes, _ = graph_of(files, files["model"], "--all")
    assert lora_projections(nodes) == []


def test_graph_layer_option(files):
    path = write_tiny_adapter(files["dir"] / "layer1.gguf", SPEC, ("attn_q", "ffn_down"), layers=[1])
    nodes, _ = graph_of(files, files["model"], "--lora", path, "--layer", "1")
    assert layers_shown(nodes) == {1}
    assert lora_projections(nodes) == ["blk.1.attn_q", "blk.1.ffn_down"]
    nodes, _ = graph_of(files, files["model"], "--lora", path, "--layer", "0")
    assert layers_shown(nodes) == {0} and lora_projections(nodes) == []


def test_graph_tied_model(files):
    targets = ("output", "token_embd", "attn_k")
    path = write_tiny_adapter(files["dir"] / "tied_graph.gguf", TinySpec(tied=True), targets)
    nodes, _ = graph_of(files, files["tied"], "--hot-lora", path, "--all")
    assert lora_projections(nodes) == expected_lora(targets, {0, 1}, whole_model=True)


def graph_stats(files, *extra, model=None) -> list[tuple[int, int]]:
    proc = hotlora("graph", "-m", model or files["model"], "--stats", *extra)
    assert proc.returncode == 0, proc.stderr
    return [tuple(map(int, re.search(r"(\d+) nodes, (\d+) barriers", line).groups()))
            for line in proc.stdout.splitlines()]


def test_graph_stats_counts_nodes_and_barriers(files):
    """A block is 7 nodes; each mat-mul node with adapter terms gains one phase (the lora_a), not one per adapter."""
    (block_nodes, block_barriers), (all_nodes, _) = graph_stats(files)
    assert block_nodes == 7 and all_nodes == 7 * SPEC.n_layer + 3
    with_one = graph_stats(files, "--hot-lora", files["adapter"])[0]
    with_two = graph_stats(files, "--hot-lora", files["adapter"], "--hot-lora", files["other"])[0]
    assert with_one == (7, block_barriers + 4)  # attn_qkv, attn_output, ffn_gate_up, ffn_down
    assert with_two == with_one
    assert graph_stats(files, "--hot-lora", files["other"], "--layer", "1")[0] == (7, block_barriers + 2)


def test_a_decode_sized_quantized_lora_a_converts_in_the_convert_phase(files):
    """A Q8_0 A dots x rounded to Q8_0. Below 4 tokens each thread converts x whole for its own A rows inside the
    node's convert phase, so a Q8_0 adapter costs the barriers an F16 one does; from 4 tokens on its A half waits
    for the shared conversion, one phase more per adapted node (attn_qkv and ffn_down here)."""
    model = write_tiny_model(files["dir"] / "q8_0_base.gguf", TinySpec(weight_type="Q8_0"))
    targets = ("attn_q", "ffn_down")
    f16 = write_tiny_adapter(files["dir"] / "f16_a.gguf", SPEC, targets, rank=32, tensor_type="F16")
    q8_0 = write_tiny_adapter(files["dir"] / "q8_0_a.gguf", SPEC, targets, rank=32, tensor_type="Q8_0")
    for tokens, extra in (("1", 0), ("3", 0), ("4", 2)):
        f16_barriers = graph_stats(files, "--hot-lora", f16, "--tokens", tokens, model=model)[0][1]
        q8_0_barriers = graph_stats(files, "--hot-lora", q8_0, "--tokens", tokens, model=model)[0][1]
        assert q8_0_barriers == f16_barriers + extra, tokens


def test_interactive_lora_commands(files):
    """`run -i` takes /lora commands between turns and shows the adapters as a table on stderr."""
    commands = "\n".join(["/lora", f"/lora load {files['other']} 0.5", "/lora scale 0 0.25", "/lora off",
                          "more", "/lora on", "/lora unload 1", "/lora bogus", ""]) + "\n"
    proc = hotlora("run", "-m", files["model"], "--hot-lora", files["adapter"], "-p", PROMPT, "-n", "2",
                   "--temp", "0", "-i", stdin=commands)
    assert proc.returncode == 0, proc.stderr
    tables = proc.stderr.split("LoRA adapters")[1:]
    assert len(tables) == 6  # one per valid command; the bogus one prints an error instead
    assert "adapter.gguf" in tables[0] and "other.gguf" not in tables[0]
    assert "other.gguf" in tables[1] and "0.5" in tables[1]
    assert "0.25" in tables[2]
    assert tables[3].count(" no ") == 2 and tables[4].count(" yes ") == 2  # off, then on again
    assert "other.gguf" not in tables[5]  # unloaded
    assert "error:" in proc.stderr and "usage" in proc.stderr
