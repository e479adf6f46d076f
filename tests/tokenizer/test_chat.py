"""Chat templates: rendering equals transformers' apply_chat_template; encoding adds specials/BOS."""

from __future__ import annotations

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import (
    BUILTIN_TEMPLATES,
    ByteTokenizer,
    encode_chat,
    load_pretrained_tokenizer,
    render_chat,
)

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
SYSTEM = {"role": "system", "content": "You are helpful."}
TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "  And 3+3? ünïcødé 日本 👍  "},
]
LLAMA3_TEXT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3? ünïcødé 日本 👍<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.fixture(scope="module")
def hf_chat_tokenizer():
    """A transformers tokenizer, only to call its apply_chat_template."""
    from transformers import PreTrainedTokenizerFast

    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("with_system", [False, True])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(hf_chat_tokenizer, with_system, generation_prompt):
    messages = [SYSTEM, *TURNS] if with_system else TURNS
    expected = hf_chat_tokenizer.apply_chat_template(
        messages,
        chat_template=SMOLLM2_TEMPLATE,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    assert render_chat(SMOLLM2_TEMPLATE, messages, generation_prompt) == expected
    assert ("named SmolLM" in expected) != with_system


@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
def test_builtin_templates_match_transformers(hf_chat_tokenizer, name):
    messages = [SYSTEM, *TURNS]
    expected = hf_chat_tokenizer.apply_chat_template(
        messages, chat_template=BUILTIN_TEMPLATES[name], tokenize=False, add_generation_prompt=True
    )
    assert render_chat(name, messages, True, bos_token="<s>", eos_token="</s>") == expected


def test_builtin_formats():
    assert render_chat("llama3", [SYSTEM, *TURNS], bos_token="<|begin_of_text|>") == LLAMA3_TEXT
    assert render_chat("chatml", TURNS[:1]) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    llama2 = render_chat("llama2", [SYSTEM, *TURNS[:2]], bos_token="<s>", eos_token="</s>")
    assert llama2 == "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4. </s>"
    alpaca = render_chat("alpaca", TURNS[:1])
    assert alpaca.startswith("Below is an instruction that describes a task.")
    assert alpaca.endswith("### Instruction:\nWhat is 2+2?\n\n### Response:\n")


def test_template_errors():
    with pytest.raises(DataError, match="Conversation roles must alternate"):
        render_chat("llama2", [TURNS[0], TURNS[0]])
    with pytest.raises(ConfigError, match="syntax error"):
        render_chat("{% for m in messages %}", TURNS)
    with pytest.raises(ConfigError, match="byte tokenizer has no chat template.*chatml, llama3"):
        encode_chat(ByteTokenizer(), TURNS)


def test_encode_chat_llama3(shared_data):
    tok = load_pretrained_tokenizer(str(shared_data / "tokenizers/llama3/tokenizer.model"))
    ids = encode_chat(tok, [SYSTEM, TURNS[0]])  # its own (built-in llama3) template
    assert ids[:10] == [128000, 128006, 9125, 128007, 271, 2675, 527, 11190, 13, 128009]
    assert ids[-4:] == [128006, 78191, 128007, 271]  # <|start_header_id|>assistant...\n\n
    assert ids.count(128000) == 1  # the template's BOS is not doubled
    assert tok.decode(encode_chat(tok, [SYSTEM, *TURNS]), skip_special=False) == LLAMA3_TEXT
    chatml = encode_chat(tok, TURNS[:1], template="chatml")
    assert chatml[0] == 128000 and chatml.count(128000) == 1  # add_bos: BOS put in front
    assert tok.decode(chatml) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_encode_chat_llama2_matches_meta(shared_data):
    path = shared_data / "tokenizers/llama2/tokenizer.model"
    tok, sp = load_pretrained_tokenizer(str(path)), spm.SentencePieceProcessor(model_file=str(path))
    ids = encode_chat(tok, [SYSTEM, *TURNS])
    # Meta's llama chat_completion: [bos] [INST] user [/INST] answer [eos] per exchange.
    first = f"[INST] <<SYS>>\n{SYSTEM['content']}\n<</SYS>>\n\n{TURNS[0]['content']} [/INST] 4. "
    last = f"[INST] {TURNS[2]['content'].strip()} [/INST]"
    assert ids == [1, *sp.encode(first), 2, 1, *sp.encode(last)]
