"""`lmforge serve`: load a checkpoint, start the engine thread, run uvicorn until SIGTERM.

On SIGTERM (or Ctrl-C) the server drains: requests in flight finish, new ones get 503, and once
none is left uvicorn shuts down and the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import signal
import threading
from pathlib import Path

import torch
import uvicorn

from lmforge.errors import ConfigError
from lmforge.inference.language_model import open_for_decoding
from lmforge.parallel.plan_command import parse_memory
from lmforge.runtime import physical_cores
from lmforge.serve.app import ServeSettings, create_app
from lmforge.serve.engine import Engine
from lmforge.serve.gate import ServerState
from lmforge.serve.options import ServeCommand

API_KEY_ENV = "LMFORGE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn, except that a signal starts a drain instead of closing the listening socket
    (so late requests get a 503 rather than a refused connection), and that the process ends
    with exit code 0 instead of re-raising the signal."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame) -> None:
        if self.state.draining:
            self.should_exit = self.force_exit = True
            return
        logging.getLogger("lmforge.serve").info("draining: finishing requests in flight")
        self.state.draining = True

    async def on_tick(self, counter: int) -> bool:
        if self.state.draining and self.state.in_flight == 0:
            return True
        return await super().on_tick(counter)


def check_command(command: ServeCommand) -> str | None:
    """The API key to require (flag or $LMFORGE_API_KEY); refuses settings that cannot work."""
    api_key = command.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(command.host) and api_key is None:
        raise ConfigError(
            f"--host {command.host} is reachable from other machines; set --api_key (or "
            f"${API_KEY_ENV}) so that clients must send it, or bind 127.0.0.1"
        )
    for name in ("max_batch_size", "max_tokens_cap", "max_body_bytes", "max_step_tokens"):
        if getattr(command, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if command.max_step_tokens <= command.max_batch_size:
        raise ConfigError(
            f"--max_step_tokens {command.max_step_tokens} leaves no room for prompts beside "
            f"--max_batch_size {command.max_batch_size} decoding rows (one token each); raise it"
        )
    if command.threads < 0:
        raise ConfigError("--threads must be 0 (auto) or more")
    if command.max_queue < 0:
        raise ConfigError("--max_queue must be 0 or more (0 refuses every request with 429)")
    if not math.isfinite(command.request_timeout) or command.request_timeout < 0:
        raise ConfigError("--request_timeout must be a number of seconds, 0 for no limit")
    return api_key


def engine_settings(command: ServeCommand) -> dict:
    """The engine's settings from the command line's (checked by `check_command` first)."""
    memory = command.kv_cache_memory.strip()
    return dict(
        max_batch_size=command.max_batch_size,
        max_step_tokens=command.max_step_tokens,
        max_queue=command.max_queue,
        request_timeout=command.request_timeout or None,
        kv_cache_memory=0 if memory == "0" else parse_memory(memory, "--kv_cache_memory"),
    )


def choose_serve_threads(requested: int) -> str:
    """Set torch's intra-op threads for serving; returns the choice, for the start-up line.

    Auto is one per physical core, as for training: on the 2-core EPYC, 16 concurrent clients got
    176 tok/s with 2 threads against 127 with 1. A single client decodes faster with 1 (47 against
    38 tok/s there), because the HTTP loop then has a core of its own (BENCHMARKS.md, serving).
    """
    if requested > 0:
        torch.set_num_threads(requested)
        return f"{requested} threads (--threads)"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} threads (OMP_NUM_THREADS)"
    cores = physical_cores()
    torch.set_num_threads(cores)
    return f"{cores} threads (one per physical core)"


def default_model_name(source: Path) -> str:
    """The checkpoint directory's name; a file's (a .gguf) without its suffix."""
    source = source.resolve()
    return source.stem if source.is_file() else source.name


def serve(command: ServeCommand) -> None:
    api_key = check_command(command)
    settings = engine_settings(command)
    threads = choose_serve_threads(command.threads)
    model, tokenizer, source, weights = open_for_decoding(
        command.checkpoint, command.device, command.dtype, command.quantize
    )
    serve_settings = ServeSettings(
        model_name=command.model_name or default_model_name(source),
        api_key=api_key,
        max_body_bytes=command.max_body_bytes,
        max_tokens_cap=command.max_tokens_cap,
        template=command.template,
    )
    engine = Engine(model, tokenizer, **settings)
    state = ServerState()
    app = create_app(engine, serve_settings, state)
    config = uvicorn.Config(
        app, host=command.host, port=command.port, log_level=command.log_level, access_log=False
    )
    print(
        f"serving {source} as '{serve_settings.model_name}' ({weights}, {threads}) on "
        f"http://{command.host}:{command.port}/v1",
        flush=True,
    )
    run_http_beside_engine(DrainingServer(config, state), engine)


def run_http_beside_engine(server: DrainingServer, engine: Engine) -> None:
    """uvicorn on a thread of its own, the engine on the main thread, until the server ends.

    The engine runs where the model was loaded: a second thread doing the matmuls gets a second
    OpenMP team beside the main thread's, and a 16-row linear layer then ran 1.4-1.8x slower
    (0.27-0.35 ms against 0.19). Signals reach the main thread, which hands them to uvicorn's
    drain (`DrainingServer.handle_exit`)."""
    failed: list[BaseException] = []

    def http() -> None:
        try:
            server.run()
        except BaseException as error:  # noqa: BLE001 (uvicorn exits with SystemExit on errors)
            failed.append(error)
        finally:
            engine.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    thread = threading.Thread(target=http, name="lmforge-http", daemon=True)
    thread.start()
    engine.run()
    thread.join()
    if failed or not server.started:
        raise ConfigError(
            f"the HTTP server on {server.config.host}:{server.config.port} stopped with an error "
            "(is the port in use? see the log above); pick another --port or --host"
        )
