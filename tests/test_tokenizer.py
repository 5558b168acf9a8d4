"""Tokenizer tests against tokenizers.md: llama.cpp's test vectors (§9), BOS/special handling (§2, §6), byte
fallback (§3), detokenization (§7), every pre-tokenizer set (§4) and vocabulary validation (§1)."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import gguf
import pytest

from hotlora.errors import ModelFileError, TokenizerError
from hotlora.tokenizer import StreamDecoder, Tokenizer
from hotlora.tokenizer.decode import clean_spaces
from hotlora.tokenizer.pretokenize import PRE_TOKENIZERS, REGEX_SETS, pretokenize

DATA = Path(__file__).parent / "data" / "tokenizer"
VOCABS = ("llama-spm", "gpt-2")
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_path(name: str) -> Path:
    return DATA / f"ggml-vocab-{name}.gguf"


def load_cases(name: str) -> list[tuple[str, list[int]]]:
    """§9: split `.inp` on the separator (dropping the final remainder); one `.out` line per string."""
    texts = vocab_path(name).with_suffix(".gguf.inp").read_bytes().decode("utf-8").split(SEPARATOR)[:-1]
    lines = vocab_path(name).with_suffix(".gguf.out").read_bytes().decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines)
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


CASES = [(name, i, text, ids) for name in VOCABS for i, (text, ids) in enumerate(load_cases(name))]
CASE_IDS = [f"{name}-{i:02d}" for name, i, _, _ in CASES]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    return {name: Tokenizer(vocab_path(name)) for name in VOCABS}


@pytest.fixture(scope="module")
def spm(tokenizers) -> Tokenizer:
    return tokenizers["llama-spm"]


@pytest.fixture(scope="module")
def gpt2(tokenizers) -> Tokenizer:
    return tokenizers["gpt-2"]


# -- 1. test vectors (§9) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, i, text, expected", CASES, ids=CASE_IDS)
def test_vectors(tokenizers, name, i, text, expected):
    assert tokenizers[name].tokenize(text, add_bos=False, special=False) == expected


# -- 2./3. BOS and special tokens (§2, §6) ----------------------------------------------------------------------

def test_vocab_properties(spm, gpt2):
    assert (spm.model, spm.n_vocab, spm.bos_id, spm.eos_id, spm.add_bos) == ("llama", 32000, 1, 2, True)
    assert spm.eog_ids == {2} and spm.is_eog(2) and not spm.is_eog(1)
    assert (gpt2.model, gpt2.pre, gpt2.n_vocab, gpt2.bos_id, gpt2.eos_id, gpt2.add_bos) == \
        ("gpt2", "gpt-2", 50257, 50256, 50256, False)
    assert gpt2.eog_ids == {50256}


def test_add_bos(spm, gpt2):
    assert spm.tokenize("Hello world") == [1, 15043, 3186]
    assert spm.tokenize("Hello world", add_bos=False) == [15043, 3186]
    assert gpt2.tokenize("Hello world") == [15496, 995]  # gpt-2 adds no BOS
    assert spm.tokenize("") == [1] and spm.tokenize("", add_bos=False) == []


def test_special_parsing(spm, gpt2):
    assert spm.tokenize("<s>Hi", add_bos=False, special=True) == [1, *spm.tokenize("Hi", add_bos=False)]
    assert 1 not in spm.tokenize("<s>Hi", add_bos=False, special=False)
    assert gpt2.tokenize("a<|endoftext|>b", special=True) == [64, 50256, 65]
    assert 50256 not in gpt2.tokenize("a<|endoftext|>b", special=False)


def test_spm_prefix_space_after_special(spm):
    """§2 step 2: a text fragment after a special token gets the prefix space again."""
    hi = spm.tokenize("Hi", add_bos=False)
    assert spm.tokenize("Hi</s>Hi", add_bos=False) == [*hi, 2, *hi]


# -- 4. byte fallback (§3 step 4) -------------------------------------------------------------------------------

def test_byte_fallback(spm):
    text = "\U0001f999"  # 🦙, not in the SPM vocab: four <0xHH> tokens after the prefix space
    ids = spm.tokenize(text, add_bos=False)
    assert [spm.vocab.texts[i] for i in ids] == ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert spm.token_to_piece(ids[1]) == b"\xf0"
    assert spm.detokenize(ids) == text


# -- 5. detokenization (§7) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, i, text, expected", CASES, ids=CASE_IDS)
def test_roundtrip(tokenizers, name, i, text, expected):
    tok = tokenizers[name]
    ids = tok.tokenize(text, add_bos=False, special=False)
    if name == "gpt-2":  # lossless pieces; detokenize also applies the §7.2 clean-up
        assert b"".join(tok.token_to_piece(t) for t in ids) == text.encode("utf-8")
        assert tok.detokenize(ids) == clean_spaces(text.encode("utf-8")).decode("utf-8")
    else:  # the prefix space added by tokenize is the one detokenize strips
        assert tok.detokenize(ids) == text


def test_detokenize_special(spm, gpt2):
    assert spm.detokenize([1, 15043, 3186]) == " Hello world"  # BOS piece empty, no strip after it
    assert spm.detokenize([1, 15043, 3186], special=True) == "<s> Hello world"
    assert spm.token_to_piece(1) == b"" and spm.token_to_piece(1, special=True) == b"<s>"
    assert gpt2.detokenize([15496, 50256], special=True) == "Hello<|endoftext|>"


def test_clean_spaces():
    assert clean_spaces(b"a , b . c ' d he 's I 'm we 're you 've it 't I 'd we 'll") == \
        b"a, b. c'd he's I'm we're you've it 't I 'd we 'll"


@pytest.mark.parametrize("token", [-1, 32000, 10**9])
def test_token_out_of_range(spm, token):
    with pytest.raises(TokenizerError, match="ggml-vocab-llama-spm.gguf.*out of range"):
        spm.token_to_piece(token)
    with pytest.raises(TokenizerError):
        spm.detokenize([15043, token])


# -- 6. streaming (§7.1) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VOCABS)
def test_stream_decoder_holds_partial_characters(tokenizers, name):
    tok = tokenizers[name]
    ids = tok.tokenize("x\U0001f999 \U0001f680é", add_bos=False)
    decoder = StreamDecoder(tok)
    chunks = [decoder.push(t) for t in ids]
    assert "" in chunks  # some tokens carry only part of an emoji
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) + decoder.flush() == b"".join(tok.token_to_piece(t) for t in ids).decode("utf-8")
    if name == "gpt-2":
        assert "".join(chunks) == tok.detokenize(ids)
    else:
        assert "".join(chunks) == tok.detokenize([1, *ids])  # llama-cli prints the prefix space


def test_stream_decoder_flush_and_special(spm):
    decoder = StreamDecoder(spm)
    assert decoder.push(spm.vocab.ids["<0xF0>"]) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(15043) == " Hello"
    assert StreamDecoder(spm).push(2) == "" and StreamDecoder(spm, special=True).push(2) == "</s>"


# -- 7. pre-tokenizer sets (§4) ---------------------------------------------------------------------------------

SPLITS = [
    ("LLAMA3", "12345", ["123", "45"]),
    ("LLAMA3", "Hello world", ["Hello", " world"]),
    ("LLAMA3", "I'M here", ["I", "'M", " here"]),
    ("LLAMA3", "a\n\n b", ["a", "\n\n", " b"]),
    ("LLAMA3", "  a", [" ", " a"]),
    ("LLAMA3", "x!!\n\ny", ["x", "!!\n\n", "y"]),
    ("QWEN2", "12345", ["1", "2", "3", "4", "5"]),
    ("QWEN2", "v2.0", ["v", "2", ".", "0"]),
    ("GPT2", "it's", ["it", "'s"]),
    ("GPT2", "IT'S", ["IT", "'", "S"]),
    ("GPT2", "  a", [" ", " a"]),
    ("GPT2", "a   ", ["a", "   "]),
    ("GPT2", "a   b", ["a", "  ", " b"]),
    ("GPT2", "x 12ab", ["x", " 12", "ab"]),
    ("DEFAULT", "1234567", ["123", "456", "7"]),
    ("DEFAULT", "a,b~c", ["a", ",", "b", "~", "c"]),
    ("STARCODER", "ab12 c", ["ab", "1", "2", " c"]),
    ("FALCON", "x=`1234`", ["x", "=`", "123", "4", "`"]),
    ("DEEPSEEK_LLM", "Hi\nthere 42", ["Hi", "\n", "there", " ", "42"]),
    ("DEEPSEEK_LLM", "。\u3000\u3000", ["。", "\u3000\u3000"]),
    ("DEEPSEEK_CODER", "abc123", ["abc", "1", "2", "3"]),
    ("DEEPSEEK_CODER", "。\u3000。", ["。", "\u3000", "。"]),  # U+3000 reads as U+000B, outside ࠀ-一 (§4.1)
    ("DEEPSEEK3", "12345", ["123", "45"]),
    ("DEEPSEEK3", "~é", ["~é"]),  # `~` is not in \p{S} for llama.cpp (§4.1)
    ("PORO", "Hello, world!", ["Hello", ",", " world", "!"]),
    ("VIKING", "abc123", ["abc", "1", "2", "3"]),
    ("TEKKEN", "HelloWorld", ["Hello", "World"]),
    ("CHAMELEON", "IMGIMGABZ", ["IMGIMGABZ"]),
    ("CHAMELEON", "a\n\nb", ["a", "\n", "\n", "b"]),
]


@pytest.mark.parametrize("regex_set, text, expected", SPLITS)
def test_pretokenize_splits(regex_set, text, expected):
    assert pretokenize(text, regex_set) == expected


@pytest.mark.parametrize("regex_set", sorted(REGEX_SETS))
def test_pretokenize_keeps_everything(regex_set):
    text = "Hello, y'all! 3.14 \t\n 我想在apple工作 кириллица ½² ~`| 😁\u3000end  "
    pieces = pretokenize(text, regex_set)
    assert "".join(pieces) == text and all(pieces)


@pytest.mark.parametrize("pre, regex_set, flags", [
    ("default", "DEFAULT", (False, False, True)),
    ("llama-bpe", "LLAMA3", (True, True, True)),
    ("llama3", "LLAMA3", (True, True, True)),
    ("qwen2", "QWEN2", (False, False, False)),
    ("gpt-2", "GPT2", (False, False, True)),
    ("mpt", "GPT2", (False, False, True)),
    ("starcoder", "STARCODER", (False, False, True)),
    ("refact", "STARCODER", (False, False, True)),
    ("smollm", "STARCODER", (False, False, False)),
    ("falcon", "FALCON", (False, False, True)),
    ("deepseek-llm", "DEEPSEEK_LLM", (False, False, False)),
    ("deepseek-coder", "DEEPSEEK_CODER", (False, False, False)),
    ("tekken", "TEKKEN", (True, True, False)),
])
def test_pre_table(pre, regex_set, flags):
    row = PRE_TOKENIZERS[pre]
    assert (row.regex_set, (row.ignore_merges, row.add_bos, row.clean_spaces)) == (regex_set, flags)


WHITESPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}


def char_class(piece: str, i: int) -> str | None:
    """§4.1 classes: 'W' whitespace, 'L' letter, 'N' number, 'O' other; None past the end."""
    if i >= len(piece):
        return None
    c = piece[i]
    return "W" if c in WHITESPACE else {"L": "L", "N": "N"}.get(unicodedata.category(c)[0], "O")


def run_length(piece: str, start: int, cls: str) -> int:
    end = start
    while char_class(piece, end) == cls:
        end += 1
    return end - start


def contraction(piece: str, pos: int, fold) -> int:
    if piece[pos] == "'" and pos + 1 < len(piece):
        if fold(piece[pos + 1]) in "stmd":
            return 2
        if pos + 2 < len(piece) and fold(piece[pos + 1:pos + 3]) in ("re", "ve", "ll"):
            return 3
    return 0


def whitespace_step(piece: str, pos: int) -> int:
    k = run_length(piece, pos, "W")
    return k - 1 if k > 1 and pos + k < len(piece) else k


def gpt2_step(piece: str, pos: int) -> int:
    """§4.3, transcribed step by step (the oracle for the GPT2 regex)."""
    n = contraction(piece, pos, lambda s: s)
    if n:
        return n
    skip = 1 if piece[pos] == " " else 0
    cls = char_class(piece, pos + skip)
    if cls in ("L", "N", "O"):
        return skip + run_length(piece, pos + skip, cls)
    return whitespace_step(piece, pos) or 1


def llama3_step(piece: str, pos: int) -> int:
    """§4.4, transcribed step by step (the oracle for the LLAMA3 regex)."""
    n = contraction(piece, pos, str.lower)
    if n:
        return n
    here = char_class(piece, pos)
    if piece[pos] not in "\r\n" and here != "N" and "L" in (here, char_class(piece, pos + 1)):
        return 1 + run_length(piece, pos + 1, "L")
    if here == "N":
        return min(3, run_length(piece, pos, "N"))
    skip = 1 if piece[pos] == " " else 0
    if char_class(piece, pos + skip) == "O":
        end = pos + skip + run_length(piece, pos + skip, "O")
        while end < len(piece) and piece[end] in "\r\n":
            end += 1
        return end - pos
    k = run_length(piece, pos, "W")
    newlines = [i for i in range(pos, pos + k) if piece[i] in "\r\n"]
    if newlines:
        return newlines[-1] + 1 - pos
    return whitespace_step(piece, pos) or 1


def oracle_split(text: str, step) -> list[str]:
    pieces, pos = [], 0
    while pos < len(text):
        n = step(text, pos)
        pieces.append(text[pos:pos + n])
        pos += n
    return pieces


@pytest.mark.parametrize("regex_set, step", [("GPT2", gpt2_step), ("LLAMA3", llama3_step)])
def test_hand_written_matchers(regex_set, step):
    """§4.3/§4.4: the regexes behave exactly like llama.cpp's hand-written matchers on random text."""
    rng = random.Random(1234)
    alphabet = list("aBsStTmMdDrReEvVlL'1²½ \t\n\r!.~\u3000\xa0é中😀\u0301")
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 14)))
        assert pretokenize(text, regex_set) == oracle_split(text, step), repr(text)


# -- BPE flags and special-token details on tiny vocabularies (§5, §6) ------------------------------------------

def write_vocab(path: Path, tokens=None, model="gpt2", pre="gpt-2", merges=(), types=None, scores=None,
                **extra) -> Path:
    """A vocab-only GGUF; `extra` maps key suffixes after `tokenizer.ggml.` to (value, GGUFValueType)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if model is not None:
        writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    if tokens is not None:
        writer.add_token_list(tokens)
    if merges:
        writer.add_token_merges(list(merges))
    if types is not None:
        writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
    for key, (value, vtype) in extra.items():
        writer.add_key_value(f"tokenizer.ggml.{key}", value, vtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


U32, BOOL = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.BOOL
TINY = ["a", "b", "c", "bc", "abc", "<|im_end|>", "<tool>", "Ġ"]
TINY_TYPES = [1, 1, 1, 1, 1, 1, 4, 1]  # <|im_end|> NORMAL (forced to CONTROL), <tool> USER_DEFINED


@pytest.mark.parametrize("pre, expected", [("gpt-2", [0, 3]), ("llama-bpe", [4])])
def test_ignore_merges(tmp_path, pre, expected):
    tok = Tokenizer(write_vocab(tmp_path / "v.gguf", TINY, pre=pre, merges=["b c"], types=TINY_TYPES,
                                bos_token_id=(7, U32)))
    assert tok.tokenize("abc", add_bos=False) == expected
    assert tok.add_bos == (pre == "llama-bpe")


def test_special_detection(tmp_path):
    path = write_vocab(tmp_path / "v.gguf", TINY, merges=["b c"], types=TINY_TYPES,
                       eos_token_id=(99, U32), add_eos_token=(True, BOOL))
    tok = Tokenizer(path)
    assert tok.eos_id is None and tok.bos_id is None  # 99 ignored; the BPE default 11 does not exist here
    assert tok.eog_ids == {5} and tok.vocab.special["eot"] == 5
    assert tok.tokenize("a<|im_end|>", add_bos=False, special=True) == [0, 5]
    assert 5 not in tok.tokenize("a<|im_end|>", add_bos=False, special=False)  # forced CONTROL
    assert tok.tokenize("a<tool>bc", add_bos=False, special=False) == [0, 6, 3]  # USER_DEFINED always parsed
    assert tok.token_to_piece(5) == b"" and tok.token_to_piece(6) == b"<tool>"
    with pytest.raises(TokenizerError, match="adds EOS but has no EOS token"):
        tok.tokenize("a")


def test_missing_pre_uses_default(tmp_path, caplog):
    tok = Tokenizer(write_vocab(tmp_path / "v.gguf", TINY, pre=None, merges=["b c"], types=TINY_TYPES))
    assert tok.pre == "default" and "missing pre-tokenizer type" in caplog.text


def test_double_bos_warning(spm, caplog):
    assert spm.tokenize("<s>Hi")[:2] == [1, 1] and "2 BOS tokens" in caplog.text


def test_from_reader_matches_path(tmp_path):
    path = vocab_path("llama-spm")
    a, b = Tokenizer(path), Tokenizer.from_reader(gguf.GGUFReader(path), path)
    assert (a.vocab.texts, a.vocab.scores, a.vocab.types) == (b.vocab.texts, b.vocab.scores, b.vocab.types)
    tiny = write_vocab(tmp_path / "v.gguf", TINY, merges=["b c"], types=TINY_TYPES)
    assert Tokenizer.from_reader(gguf.GGUFReader(tiny), tiny).vocab.ranks == {("b", "c"): 0}


# -- 8. bad vocabulary files (§1) -------------------------------------------------------------------------------

BAD_VOCABS = {
    "missing-tokens": (dict(tokens=None), "cannot find tokenizer vocab"),
    "missing-model": (dict(model=None), "key not found in model: tokenizer.ggml.model"),
    "unknown-model": (dict(model="wordpiece2"), "unknown tokenizer: 'wordpiece2'"),
    "unsupported-model": (dict(model="bert"), "tokenizer 'bert' is not supported"),
    "unknown-pre": (dict(pre="nope"), "unknown pre-tokenizer type: 'nope'"),
    "missing-merges": (dict(merges=()), "cannot find tokenizer merges"),
    "scores-length": (dict(scores=[0.0, 0.0]), "tokenizer.ggml.scores has 2 entries but tokenizer.ggml.tokens has 8"),
    "types-length": (dict(types=[1]), "tokenizer.ggml.token_type has 1 entries"),
    "types-type": (dict(types=None, token_type=([1.0] * 8, gguf.GGUFValueType.ARRAY)),
                   "key tokenizer.ggml.token_type has wrong type array\\[float32\\] but expected type array\\[int32\\]"),
    "bos-type": (dict(bos_token_id=("x", gguf.GGUFValueType.STRING)), "bos_token_id has wrong type string"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOCABS))
def test_bad_vocab(tmp_path, case):
    changes, message = BAD_VOCABS[case]
    path = write_vocab(tmp_path / f"{case}.gguf", **{**dict(tokens=TINY, merges=["b c"], types=TINY_TYPES),
                                                      **changes})
    with pytest.raises(TokenizerError, match=message) as error:
        Tokenizer(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_not_a_gguf(tmp_path):
    for name, content in (("empty.gguf", b""), ("text.gguf", b"hello world, not a model"),
                          ("truncated.gguf", vocab_path("gpt-2").read_bytes()[:5000])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=name):
            Tokenizer(tmp_path / name)
    with pytest.raises(ModelFileError, match="missing.gguf: cannot read file"):
        Tokenizer(tmp_path / "missing.gguf")
