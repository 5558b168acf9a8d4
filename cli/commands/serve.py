"""`hotlora serve`: llama-server's options and endpoints, plus per-request adapters and runtime adapter loading."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import HotLoraError
from .options import HotLora, HotLoraScaled, NoRepack, Threads, adapter_list, int_option

Opt = typer.Option


def adapter_name(path: Path) -> str:
    """What `"model": NAME` calls an adapter given at launch: its file name without .gguf (a folder's name)."""
    return path.name[:-len(".gguf")] if path.name.endswith(".gguf") else path.name


def serve(
    model: Annotated[Optional[Path], Opt("-m", "--model", help="GGUF model (default: the bundled tiny model)")] = None,
    host: Annotated[str, Opt("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, int_option("--port", help="port to listen on", low=0, high=65535)] = 8080,
    ctx_size: Annotated[int, int_option("-c", "--ctx-size", help="context size (0 = from the model)", low=0)] = 4096,
    parallel: Annotated[int, int_option("-np", "--parallel", help="slots: requests decoded together, each with n_ctx / slots cells", low=1, high=256)] = 4,
    threads: Threads = None,
    hot_lora: HotLora = None,
    hot_lora_scaled: HotLoraScaled = None,
    lora_init_without_apply: Annotated[bool, Opt("--lora-init-without-apply", help="load the adapters at global scale 0 (requests choose them)")] = False,
    lora_dir: Annotated[Optional[Path], Opt("--lora-dir", help="folder that POST /v1/load_lora_adapter may load from")] = None,
    api_key: Annotated[Optional[str], Opt("--api-key", help="require 'Authorization: Bearer KEY' (not on /health)")] = None,
    chat_template: Annotated[Optional[str], Opt("--chat-template", help="chat template: a built-in name or a Jinja file (default: the model's)")] = None,
    timeout: Annotated[int, int_option("-to", "--timeout", help="seconds a request may run", low=1)] = 600,
    max_body: Annotated[int, int_option("--max-body-bytes", help="largest request body", low=1)] = 1 << 20,
    check_tensors: Annotated[bool, Opt("--check-tensors", help="scan every weight for NaN/inf values and scales first")] = False,
    no_repack: NoRepack = False,
) -> None:
    """Serve the model over HTTP (OpenAI and llama-server endpoints), each request choosing its adapters."""
    from ..chat_template import TEMPLATE_KEY, load_chat_template
    from ..model import Model
    from ..server.engine import Engine
    from ..server.registry import Registry
    from ..server.routes import ServerSettings, create_app
    import uvicorn

    _check_listen(host, port)
    if lora_dir is not None and not lora_dir.is_dir():
        raise HotLoraError(f"--lora-dir '{lora_dir}' is not a folder")
    adapters = adapter_list(hot_lora, hot_lora_scaled)
    with Model(model, n_ctx=ctx_size, n_threads=threads, repack=not no_repack) as m:
        if check_tensors:
            from ..check_tensors import check_run_files
            check_run_files(m.file, [path for path, _ in adapters], m.n_threads)
        registry = Registry(m, lora_dir)
        for path, scale in adapters:
            _add_launch_adapter(registry, path, 0.0 if lora_init_without_apply else scale)
        template = load_chat_template(chat_template, m.file.get_str(TEMPLATE_KEY), m.path, m.tokenizer)
        engine = Engine(m, registry, m.path.name, parallel)
        settings = ServerSettings(model_name=m.path.name, api_key=api_key, max_body_bytes=max_body,
                                  timeout_s=timeout, chat_template=template)
        sys.stderr.write(f"main: serving {m.path.name} with {len(adapters)} adapter(s) and {parallel} slot(s) of "
                         f"{engine.slot_ctx} cells on http://{host}:{port}\n")
        try:
            uvicorn.run(create_app(engine, settings), host=host, port=port, log_level="warning")
        finally:
            engine.close()


def _check_listen(host: str, port: int) -> None:
    """One error line, before the model loads, when the address cannot be listened on (uvicorn would log it and
    exit with its own code)."""
    import socket
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as e:
        raise HotLoraError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def _add_launch_adapter(registry, path: Path, scale: float) -> None:
    """An adapter of --lora/--lora-scaled; a bad one is the CLI's one error line."""
    from ..server.errors import APIError
    try:
        registry.add(str(path), adapter_name(path), scale, field="--lora")
    except APIError as e:
        raise HotLoraError(e.message) from None
