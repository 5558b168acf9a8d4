"""Conversation mode: what is fed each turn is the tokenization of the rendered conversation (library level),
and `hotlora run -cnv` on the bundled model through stdin: replies, /lora commands mid-conversation, the
auto/forced/off rules, and a clean exit at end of input."""
from __future__ import annotations

import io
import re
import signal
import subprocess
import sys

from cli_util import hotlora
from factory import TinySpec, write_tiny_model
from hotlora import Tokenizer
from hotlora.chat_template import TEMPLATE_KEY, ChatTemplate, load_chat_template
from hotlora import conversation
from hotlora.commands.run import Generation
from hotlora.conversation import Conversation
from hotlora.gguf_io import GGUFFile
from hotlora.model import Model, default_adapter_paths, default_model_path

MODEL = default_model_path()
ADAPTER = next(p for p in default_adapter_paths() if p.name == "hotlora-tiny-numbers.lora.gguf")
TOKENIZER = Tokenizer(MODEL)
EOT = "<|endoftext|>"
AUTO_MESSAGE = "main: chat template is available, enabling conversation mode (disable it with -no-cnv)"


def bundled_template() -> ChatTemplate:
    return load_chat_template(None, GGUFFile(MODEL).get_str(TEMPLATE_KEY), MODEL, TOKENIZER)


def reply_tokens(text: str) -> list[int]:
    """A reply as the model would sample it: its text, then the end-of-generation token."""
    return TOKENIZER.tokenize(text + EOT, add_bos=False, special=True)


def test_fed_tokens_are_the_tokenized_conversation():
    """System message, two user turns and a reply between them: everything fed plus the sampled reply equals
    the tokenization of the whole rendered conversation (BOS once), and the stored reply has no EOS text."""
    chat = Conversation(bundled_template(), TOKENIZER, "You answer briefly.")
    fed = chat.start() + chat.add_user("What is a list?")
    fed += reply_tokens(" A sequence of items.")
    chat.add_assistant(reply_tokens(" A sequence of items."))
    fed += chat.add_user("And a tuple?")
    rendered = chat.template.render(chat.messages, add_generation_prompt=True)
    assert fed == TOKENIZER.tokenize(rendered, add_bos=True, special=True)
    assert rendered.endswith(f"user\nAnd a tuple?{EOT}\nassistant\n")
    assert chat.messages[2] == {"role": "assistant", "content": " A sequence of items."}
    assert fed.count(TOKENIZER.bos_id) == 1 + 4  # BOS, then the end of each of the four messages


def test_template_writing_bos_gets_one_bos():
    """llama3 writes bos_token itself; the tokenizer adds BOS, so the written one is dropped."""
    chat = Conversation(load_chat_template("llama3", None, MODEL, TOKENIZER), TOKENIZER)
    ids = chat.add_user("hi")
    assert ids[0] == TOKENIZER.bos_id and ids[1] != TOKENIZER.bos_id
    assert ids == TOKENIZER.tokenize(chat.template.render(chat.messages, True)[len(EOT):], add_bos=True)


def test_reply_rendered_differently_feeds_what_follows_the_history():
    """A template that trims replies: the context no longer starts the rendering, so the new text is what
    follows the history's rendering (llama.cpp's common_chat_format_single)."""
    trimming = ChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}"
                            "{% if add_generation_prompt %}assistant:{% endif %}", "test", EOT, EOT)
    chat = Conversation(trimming, TOKENIZER)
    chat.add_user("hi")
    chat.add_assistant(TOKENIZER.tokenize(" hello ", add_bos=False))
    assert chat.add_user("bye") == TOKENIZER.tokenize("user: bye\nassistant:", add_bos=False)


def test_a_chat_feeds_the_tokenized_conversation(monkeypatch, capsys):
    """The conversation loop on the bundled model, input on stdin: every token the session evaluated or sampled,
    in order, is the tokenization of the text the conversation renders (the last reply's EOS not yet rendered)."""
    sessions = []

    class RecordedSession(conversation.Session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(conversation, "Session", RecordedSession)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is a list?\nAnd a tuple?\n"))
    with Model(MODEL, n_ctx=512) as m:
        gen = Generation(prompt_ids=[], n_predict=24, reverse_prompts=[], sampling=dict(temp=0.0), interactive=True,
                         display_prompt=False, as_json=False, escape=True)
        chat = Conversation(bundled_template(), m.tokenizer, "Be brief.")
        conversation.run_conversation(m, gen, chat, "Hello")
    assert [x["role"] for x in chat.messages] == ["system", "user", "assistant", "user", "assistant", "user",
                                                  "assistant"]
    assert chat.template.render(chat.messages, add_generation_prompt=False).startswith(chat.context_text)
    assert sessions[0].history == TOKENIZER.tokenize(chat.context_text, add_bos=True, special=True)
    assert capsys.readouterr().out.count("\n> ") == 3


def chat_run(stdin: str, *args: str, model=MODEL):
    proc = hotlora("run", "-m", model, "--temp", "0", "-n", "12", *args, stdin=stdin)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_lora_command_mid_conversation():
    proc = chat_run(f"What is a list?\n/lora load {ADAPTER} 0.5\nAdd two numbers.\n", "-cnv", "-sys", "Be brief.")
    assert proc.stdout.startswith("system\nBe brief.\n")  # the system message's echo (control tokens hidden)
    assert proc.stdout.count("\n> ") == 4 and proc.stdout.endswith("\n> \n\n")
    assert re.search(r"│ +0 │ hotlora-tiny-numbers\S* +│ +0\.5 │ yes", proc.stderr)
    assert AUTO_MESSAGE not in proc.stderr and not [x for x in proc.stderr.splitlines() if x.startswith("error")]


def test_prompt_is_the_first_user_message():
    """-p starts the chat: its reply comes before the first `> ` marker; the same chat typed gives the same
    reply (greedy)."""
    given = chat_run("", "-cnv", "-p", "What is a list?", "--no-display-prompt").stdout
    typed = chat_run("What is a list?\n", "-cnv").stdout
    assert given.endswith("\n> \n\n") and not given.startswith("\n> ")
    assert typed == "\n> " + given


def test_auto_on_without_prompt_off_with_prompt_or_no_cnv():
    auto = chat_run("hello\n")
    assert AUTO_MESSAGE in auto.stderr and auto.stdout.endswith("\n> \n\n")
    for args in (("-p", "hello"), ("-no-cnv",), ("--no-conversation",)):
        plain = chat_run("hello\n", *args)
        assert AUTO_MESSAGE not in plain.stderr and "\n> " not in plain.stdout, args


def test_end_of_input_exits_cleanly():
    proc = chat_run("", "--conversation")
    assert proc.stdout == "\n> \n\n"
    assert "llama_perf_context_print:       total time" in proc.stderr


def test_ctrl_c_while_waiting_for_input():
    """As any interactive run: a newline, the report, `Interrupted by user`, exit code 130."""
    proc = subprocess.Popen([sys.executable, "-m", "hotlora", "run", "-m", str(MODEL), "-cnv"], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(3) == "\n> "  # the input marker: input is read next
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and out == "\nInterrupted by user\n", (out, err)
    assert "llama_perf_context_print:       total time" in err and "Traceback" not in err


def test_json_is_refused_in_conversation_mode():
    proc = hotlora("run", "-m", MODEL, "-cnv", "--json", stdin="")
    assert proc.returncode == 1 and proc.stderr == "error: --json does not work in conversation mode\n", proc.stderr


def test_forced_without_template_warns_and_uses_chatml(tmp_path):
    model = write_tiny_model(tmp_path / "plain.gguf", TinySpec(n_layer=1))
    proc = chat_run("", "-cnv", "-n", "1", "-p", "hi", model=model)
    assert "main: chat template is not available or is not supported." in proc.stderr
    assert proc.stdout.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")  # the prompt's echo
