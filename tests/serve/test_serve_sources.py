"""`lmforge serve` and `lmforge chat` open what `lmforge sample` and `lmforge.load` open: a .gguf
file and a Hugging Face model directory as well as an lmforge checkpoint (one loading function,
inference/language_model.py's `open_for_decoding`). Served greedy text equals `load`'s."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import httpx
import pytest
from serve_fixtures import Server, greedy_reference, serve_checkpoint  # noqa: F401 (fixture)

from lmforge import load
from lmforge.inference.chat import chat
from lmforge.inference.options import DecodeOptions
from lmforge.inference.sample import sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from gguf_fixtures import smollm2_gguf  # noqa: E402, F401

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def tiny_gguf(serve_checkpoint, tmp_path_factory) -> Path:  # noqa: F811
    from lmforge.interop.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny-q8.gguf"
    return export_gguf(serve_checkpoint, out, dtype="q8_0")


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from hf_fixtures import save_hf_dir

    directory = tmp_path_factory.mktemp("hf") / "tiny-hf"
    save_hf_dir("llama-gqa-tied", directory)
    return directory


def served_greedy(source: Path, name: str) -> tuple[str, str]:
    """The greedy completion of PROMPT from `lmforge serve SOURCE` (checking the model's name),
    and all the server printed."""
    server = Server(source)
    try:
        assert [m["id"] for m in httpx.get(f"{server.url}/models").json()["data"]] == [name]
        body = {"model": name, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        response = httpx.post(f"{server.url}/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        text = response.json()["choices"][0]["text"]
    finally:
        server.terminate()
    output = server.stop()
    assert "Traceback" not in output, output
    return text, output


def loaded_greedy(source: Path) -> str:
    model = load(source, device="cpu", quantize="auto")
    return greedy_reference(model.model, model.tokenizer, model.encode_prompt(PROMPT), 8)


def test_serve_a_gguf_file_named_by_its_stem_at_its_own_precision(tiny_gguf):
    text, output = served_greedy(tiny_gguf, "tiny-q8")
    assert text == loaded_greedy(tiny_gguf)
    assert "int8 weights" in output, output  # --quantize auto kept the Q8_0 precision


def test_serve_a_hugging_face_directory(tiny_hf_dir):
    text, _ = served_greedy(tiny_hf_dir, "tiny-hf")
    assert text == loaded_greedy(tiny_hf_dir)


@pytest.mark.parametrize("source", ["tiny_gguf", "tiny_hf_dir"])
def test_chat_opens_what_sample_opens(source, request):
    path = str(request.getfixturevalue(source))
    options = DecodeOptions(max_new_tokens=6, temperature=0.0, device="cpu")
    answers = iter(["hello there"])

    def read(_: str) -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None  # what Ctrl-D gives `input`

    messages = chat(path, options, read=read, out=io.StringIO())
    expected = sample(path, ["hello there"], options, chat=True)[0]
    assert messages[-1]["content"] == expected.strip()


@pytest.mark.slow  # about 30 s on 2 busy cores: loading and quantizing to int4
def test_serve_smollm2_gguf_answers_a_chat(smollm2_gguf):  # noqa: F811
    server = Server(smollm2_gguf, "--max_tokens_cap", "16")
    try:
        name = smollm2_gguf.stem
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        body = {"model": name, "messages": messages, "max_tokens": 16, "temperature": 0}
        response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=60)
        assert "Paris" in response.json()["choices"][0]["message"]["content"], response.text
    finally:
        server.terminate()
    assert "Traceback" not in server.stop()
