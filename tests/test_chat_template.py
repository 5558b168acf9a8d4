"""Chat templates render exactly as a plain jinja2 Environment(trim_blocks, lstrip_blocks) renders them, for the
bundled model's template, every built-in name and a Jinja file; a template that does not compile, raises or
escapes the sandbox is one `error:` line naming where the template came from."""
from __future__ import annotations

import jinja2
import pytest

from cli_util import assert_one_line_error, hotlora
from hotlora import Tokenizer
from hotlora.chat_template import BUILT_IN, TEMPLATE_KEY, load_chat_template
from hotlora.gguf_io import GGUFFile
from hotlora.model import default_model_path

MODEL = default_model_path()
TOKENIZER = Tokenizer(MODEL)
MODEL_TEMPLATE = GGUFFile(MODEL).get_str(TEMPLATE_KEY)
EOT = "<|endoftext|>"  # the bundled vocabulary's BOS and EOS

# Indented blocks and newlines after tags: trim_blocks and lstrip_blocks change this rendering.
FILE_TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
[sys] {{ message['content'] }}
    {% else %}
<{{ message['role'] }}> {{ message['content'] | trim }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<assistant>
{% endif %}
"""

CHATS = {
    "no system": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."},
                  {"role": "user", "content": "What is a list?"}],
    "system": [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hello"},
               {"role": "assistant", "content": " Hi  there. "}, {"role": "user", "content": "Why?\nTell me."}],
}


def plain_jinja2(text: str, messages: list[dict], add_generation_prompt: bool) -> str:
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(text)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           bos_token=EOT, eos_token=EOT)


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "chat.jinja"
    path.write_text(FILE_TEMPLATE, encoding="utf-8")
    return path


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("which", ["model", *BUILT_IN, "file"])
def test_renders_as_plain_jinja2(which, chat, generation_prompt, template_file):
    choice = {"model": None, "file": str(template_file)}.get(which, which)
    template = load_chat_template(choice, MODEL_TEMPLATE, MODEL, TOKENIZER)
    text = {"model": MODEL_TEMPLATE, "file": FILE_TEMPLATE}.get(which, BUILT_IN.get(which))
    rendered = template.render(CHATS[chat], generation_prompt)
    assert rendered == plain_jinja2(text, CHATS[chat], generation_prompt)
    assert all(m["content"].strip() in rendered for m in CHATS[chat])


def test_bundled_template_is_chatml_shaped():
    rendered = load_chat_template(None, MODEL_TEMPLATE, MODEL, TOKENIZER).render(CHATS["system"][:2], True)
    assert rendered == f"system\nYou answer briefly.{EOT}\nuser\nHello{EOT}\nassistant\n"


def test_tojson_keeps_text_and_key_order():
    """HF's tojson filter: non-ASCII kept, keys in insertion order (jinja2's own filter sorts and escapes)."""
    template = load_chat_template(None, "{{ messages[0] | tojson }}", MODEL, TOKENIZER)
    assert template.render([{"role": "user", "content": "é <b>"}], False) == '{"role": "user", "content": "é <b>"}'


def run_chat(*args: str, stdin: str = "hi\n"):
    return hotlora("run", "-m", MODEL, "-cnv", "-p", "hello", "-n", "2", *args, stdin=stdin)


@pytest.mark.parametrize("source, needles", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ("refused by the sandbox", "SecurityError", "__class__")),
    ("{{ raise_exception.__globals__['os'] }}", ("refused by the sandbox", "__globals__")),
    ("{{ messages.append(messages[0]) }}", ("refused by the sandbox", "append")),
    ("{{ raise_exception('roles must alternate') }}", ("failed: TemplateError: roles must alternate",)),
    ("{% if %}", ("does not compile",)),
])
def test_bad_template_file_is_one_error_line(tmp_path, source, needles):
    path = tmp_path / "bad.jinja"
    path.write_text(source, encoding="utf-8")
    assert_one_line_error(run_chat("--chat-template", str(path)), 1, f"chat template file {path}", *needles)


def test_unknown_template_name_is_one_error_line():
    assert_one_line_error(run_chat("--chat-template", "chatml2"), 1, "--chat-template 'chatml2'", "chatml, llama2")
