"""Fixtures for the server tests: a tiny random-weight checkpoint with a BPE tokenizer and a chat
template, and `lmforge serve` started on it in a subprocess on a free 127.0.0.1 port.

Not a conftest.py (a second conftest module would replace `conftest` in sys.modules): test
modules import what they use from here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_text

from lmforge.checkpoint.directory import load_model, save_checkpoint
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.config import ModelConfig
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import HuggingFaceTokenizer

API_KEY = "test-key-123"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONTEXT = 512


def tiny_tokenizer() -> HuggingFaceTokenizer:
    tokenizer = HuggingFaceTokenizer.train([make_text(3, 150)], vocab_size=320)
    tokenizer.hf.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return HuggingFaceTokenizer(
        tokenizer.hf, eot_token="<|im_end|>", bos_token="<|im_start|>", chat_template=CHATML
    )


@torch.no_grad()
def random_model(
    vocab_size: int, seed: int = 0, context_length: int = CONTEXT, num_layers: int = 2
) -> Transformer:
    """std 0.2 weights: peaked next-token distributions, so greedy picks have clear margins."""
    config = ModelConfig(
        vocab_size=vocab_size, context_length=context_length, dim=64, num_layers=num_layers,
        num_heads=4, num_kv_heads=2, ffn_dim=96,
    )  # fmt: skip
    model = Transformer(config).eval()
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator)
        param.copy_(0.2 * noise if param.ndim >= 2 else 1.0 + 0.1 * noise)
    return model


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory) -> Path:
    tokenizer = tiny_tokenizer()
    directory = tmp_path_factory.mktemp("serve") / "tiny-chat"
    return save_checkpoint(directory, random_model(tokenizer.vocab_size), tokenizer, {"step": 0})


@pytest.fixture(scope="session")
def reference(serve_checkpoint):
    """The same checkpoint loaded in this process: (model, tokenizer)."""
    model, tokenizer, _ = load_model(serve_checkpoint, "cpu")
    return model, tokenizer


def greedy_reference(model, tokenizer, prompt_ids: list[int], max_tokens: int) -> str:
    """What `lmforge sample --temperature 0` generates: the reference for served text."""
    config = SamplingConfig(
        max_new_tokens=max_tokens, temperature=0, stop_tokens=tokenizer.stop_ids
    )
    ids = generate(model, [prompt_ids], config)[0]
    return tokenizer.decode([i for i in ids if i not in tokenizer.stop_ids])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`lmforge serve` in a subprocess; `url` is its /v1 base."""

    def __init__(self, checkpoint: Path, *flags: str):
        self.output: str | None = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1"
        command = [sys.executable, "-m", "lmforge", "serve", "--checkpoint", str(checkpoint)]
        command += ["--port", str(self.port), "--device", "cpu", "--log_level", "warning", *flags]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lmforge serve exited:\n{self.stop()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"lmforge serve did not come up:\n{self.stop()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> str:
        """Wait for the process to end (killing it if it runs on); all it printed."""
        if self.output is None:
            try:
                self.output, _ = self.process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.output, _ = self.process.communicate()
        return self.output


@pytest.fixture(scope="module")
def app_client(reference):
    """The app in this process (no socket, no subprocess) on the reference model: a TestClient
    whose requests name the model "tiny-chat"."""
    from fastapi.testclient import TestClient

    from lmforge.serve.app import ServeSettings, create_app
    from lmforge.serve.engine import Engine

    model, tokenizer = reference
    engine = Engine(model, tokenizer)
    engine.start()
    settings = ServeSettings("tiny-chat", max_tokens_cap=300, max_body_bytes=65536)
    with TestClient(create_app(engine, settings)) as client:
        yield client
    engine.stop()
