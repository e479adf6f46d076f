"""Chat templates: render a conversation the way transformers' apply_chat_template does, and
encode it. Templates are Jinja (the Hugging Face convention); a few are built in by name."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer.base import Tokenizer

BUILTIN_TEMPLATES: dict[str, str] = {
    # SmolLM2 / Qwen style, without SmolLM2's default system prompt.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Meta-Llama-3-8B-Instruct's tokenizer_config.json template.
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"
    ),
    # Llama-2-chat's: <s>[INST] <<SYS>>\n...\n<</SYS>>\n\nuser [/INST] reply </s>
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
    # Stanford Alpaca's prompt; a system message replaces its preamble.
    "alpaca": (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{{ 'Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n' }}"
        "{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
}


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Like transformers: jinja's own tojson escapes HTML characters, which chat text must keep.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # The same environment transformers builds: templates from the Hub are untrusted code.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError(f"chat template has a syntax error ({error}); fix the template") from None


def resolve_template(template: str) -> str:
    """A built-in template's name, or the Jinja source itself."""
    return BUILTIN_TEMPLATES.get(template, template)


def render_chat(
    template: str,
    messages: list[dict],
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """messages ({"role", "content"} dicts) as text, through template (a name or Jinja source)."""
    compiled = _compile(resolve_template(template))
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
        )
    except jinja2.TemplateError as error:
        raise DataError(
            f"chat template failed: {error}; fix the messages or the template"
        ) from None


def encode_chat(
    tokenizer: Tokenizer,
    messages: list[dict],
    template: str | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a rendered conversation; its markers (<|im_start|>, ...) become special ids."""
    template = template or tokenizer.chat_template
    if not template:
        names = ", ".join(BUILTIN_TEMPLATES)
        raise ConfigError(
            f"the {tokenizer.kind} tokenizer has no chat template; give a Jinja template or "
            f"the name of a built-in one ({names})"
        )

    def token_text(token_id: int | None) -> str:
        return "" if token_id is None else tokenizer.decode([token_id], skip_special=False)

    bos = token_text(tokenizer.bos_id)
    text = render_chat(template, messages, add_generation_prompt, bos, token_text(tokenizer.eot_id))
    ids = tokenizer.encode(text, allow_special=True)
    if tokenizer.add_bos and tokenizer.bos_id is not None and not (bos and text.startswith(bos)):
        ids.insert(0, tokenizer.bos_id)
    return ids
