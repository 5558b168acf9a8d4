"""Byte-level BPE pre-tokenization: the regex sets selected by `tokenizer.ggml.pre` (tokenizers.md §4).

Each regex of a set re-splits every piece produced so far, keeping both the matches and the gaps between them
(§4 intro). Python's `regex` module gives `\\s`, `\\p{L}`, `\\p{N}`… the same classes as llama.cpp (§4.1); the
places where llama.cpp's engines differ from matching on the real text are reproduced explicitly:

* a pattern without `\\p{..}` runs on a copy of the text in which non-ASCII whitespace is U+000B (this matters
  for literal ranges such as `ࠀ-一`, which contain U+3000 and other spaces);
* in patterns with `\\p{..}` the symbol class `\\p{S}` does not contain `~` (only DEEPSEEK3 uses `\\p{S}`, and
  its transcription below spells that out);
* ECMAScript `$` matches only at the end of the piece, which is Python's `\\Z` (DEEPSEEK_LLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import regex

# §4.3: the GPT-2 pattern as llama.cpp's hand-written matcher evaluates it, i.e. with GPT-2's trailing `|\s+`.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# §4.4: the hand-written Llama-3 matcher behaves exactly like the pattern itself.
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_CJK = r"[一-龥ࠀ-一가-\uD7FF]+"

# §4.2, one tuple per set, regexes in application order.
REGEX_SETS: dict[str, tuple[str, ...]] = {
    "DEFAULT": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "LLAMA3": (LLAMA3,),
    "QWEN2": (QWEN2,),
    "GPT2": (GPT2,),
    "STARCODER": (r"\p{N}", GPT2),
    "FALCON": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"),
    "DEEPSEEK_LLM": (  # six letters that Unicode normalisation would change are written as \u escapes
        r"[\r\n]",
        r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
        r"\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
        r"\s+\Z",
        _CJK,
        r"\p{N}+",
    ),
    "DEEPSEEK_CODER": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    "DEEPSEEK3": (
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|(?:~|[^\r\n\p{L}\p{P}\p{S}])?[\p{L}\p{M}]+"
        r"| ?(?:(?!~)[\p{P}\p{S}])+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "PORO": (r" ?[^(\s|.,!?…。，、।۔،)]+",),
    "VIKING": (r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"),
    "TEKKEN": (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "CHAMELEON": (
        r"<sentinel:[0-9]+>",
        r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        GPT2,
    ),
}


@dataclass(frozen=True)
class PreTokenizer:
    """One row of the §4.2 table: the regex set and the flags a `pre` value sets."""

    regex_set: str
    ignore_merges: bool = False
    add_bos: bool = False
    clean_spaces: bool = True
    has_bos: bool = True  # False: the default BOS id is cleared (llama.cpp does this for chatglm-bpe)


def _rows(names: str, row: PreTokenizer) -> dict[str, PreTokenizer]:
    return {name: row for name in names.split()}


# §4.2: `tokenizer.ggml.pre` value -> pre-tokenizer.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_rows("default", PreTokenizer("DEFAULT")),
    **_rows("llama3 llama-v3 llama-bpe falcon3", PreTokenizer("LLAMA3", ignore_merges=True, add_bos=True)),
    **_rows("dbrx smaug-bpe", PreTokenizer("LLAMA3")),
    **_rows("chatglm-bpe", PreTokenizer("LLAMA3", has_bos=False)),
    **_rows("qwen2 deepseek-r1-qwen", PreTokenizer("QWEN2", clean_spaces=False)),
    **_rows("megrez stablelm2", PreTokenizer("QWEN2")),
    **_rows("gpt-2 phi-2 roberta-bpe gigachat jina-es jina-de jina-v1-en jina-v2-es jina-v2-de jina-v2-code"
            " mpt olmo jais", PreTokenizer("GPT2")),
    **_rows("starcoder refact codeshell exaone minerva-7b", PreTokenizer("STARCODER")),
    **_rows("command-r smollm", PreTokenizer("STARCODER", clean_spaces=False)),
    **_rows("falcon", PreTokenizer("FALCON")),
    **_rows("deepseek-llm", PreTokenizer("DEEPSEEK_LLM", clean_spaces=False)),
    **_rows("deepseek-coder", PreTokenizer("DEEPSEEK_CODER", clean_spaces=False)),
    **_rows("deepseek-v3", PreTokenizer("DEEPSEEK3", clean_spaces=False)),
    **_rows("bloom gpt3-finnish", PreTokenizer("PORO")),
    **_rows("poro-chat", PreTokenizer("PORO", clean_spaces=False)),
    **_rows("viking", PreTokenizer("VIKING", clean_spaces=False)),
    **_rows("tekken", PreTokenizer("TEKKEN", ignore_merges=True, add_bos=True, clean_spaces=False)),
    **_rows("chameleon", PreTokenizer("CHAMELEON", add_bos=True, clean_spaces=False)),
}

# §4.1: code points llama.cpp treats as whitespace, and the U+000B stand-in for the non-ASCII ones.
_NON_ASCII_SPACES = "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
                    "\u2028\u2029\u202f\u205f\u3000"
_SPACES_TO_VT = str.maketrans({c: "\x0b" for c in _NON_ASCII_SPACES})


@dataclass(frozen=True)
class _Splitter:
    pattern: regex.Pattern
    spaces_to_vt: bool


@cache
def _splitter(pattern: str) -> _Splitter:
    """Compile one regex of a set; only the code-point engine sees non-ASCII whitespace as U+000B (§4.1)."""
    code_point_engine = pattern not in (GPT2, LLAMA3) and r"\p{" not in pattern
    return _Splitter(regex.compile(pattern), code_point_engine)


def _split(pieces: list[str], splitter: _Splitter) -> list[str]:
    """Re-split every piece by one regex, keeping matches and the gaps between them."""
    out: list[str] = []
    for piece in pieces:
        subject = piece.translate(_SPACES_TO_VT) if splitter.spaces_to_vt else piece
        start = 0
        for m in splitter.pattern.finditer(subject):
            if m.start() > start:
                out.append(piece[start:m.start()])
            out.append(piece[m.start():m.end()])
            start = m.end()
        if start < len(piece):
            out.append(piece[start:])
    return out


def pretokenize(text: str, regex_set: str) -> list[str]:
    """Split `text` into pieces with the named regex set of §4.2 (e.g. "LLAMA3")."""
    pieces = [text] if text else []
    for pattern in REGEX_SETS[regex_set]:
        pieces = _split(pieces, _splitter(pattern))
    return pieces
