"""The real SmolLM2-135M-Instruct (GGUF, read in memory): its own chat template labels only the
reply, and two LoRA SFT steps on the Alpaca demo run, saving adapters under 1% of the model."""

from __future__ import annotations

import dataclasses

from finetune_fixtures import smollm2_gguf  # noqa: F401

from lmforge.checkpoint.adapters import ADAPTER_FILE
from lmforge.config import FinetuneConfig, FinetuneRunConfig, LoraConfig, config_from_dict
from lmforge.data.chat_records import load_conversations
from lmforge.data.sft import IGNORE, tokenize_conversation
from lmforge.finetune.run import finetune


def test_smollm2_lora_sft(tmp_path, smollm2_gguf, shared_data):  # noqa: F811
    data = shared_data / "instruct" / "alpaca_en_demo.json"
    run = config_from_dict(
        {
            "train": {
                "out_dir": str(tmp_path / "run"), "max_steps": 2, "seq_len": 64,
                "micro_batch_size": 2, "batch_tokens": 128, "dtype": "auto", "device": "cpu",
                "peak_tflops": 1.0, "log_interval": 1, "eval_interval": 2, "eval_batches": 1,
            },
            "logging": {"progress_bar": False},
        },
        cls=FinetuneRunConfig,
    )  # fmt: skip
    settings = FinetuneConfig(
        init_from=str(smollm2_gguf), data=str(data), val_max_examples=2,
        lora=LoraConfig(enabled=True),
    )  # fmt: skip
    run = dataclasses.replace(run, finetune=settings)
    result = finetune(run)
    assert result.step == 2 and result.val_loss is not None and result.val_loss < 5
    last = result.out_dir / "checkpoints" / "last"
    assert (last / ADAPTER_FILE).stat().st_size < 0.01 * 4 * 134_515_008  # < 1% of fp32 weights

    from lmforge.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(last)
    conversation = load_conversations(str(data), "auto")[0]
    example = tokenize_conversation(tokenizer, conversation, tokenizer.chat_template, "record 0")
    text = tokenizer.decode(example.ids, skip_special=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    labelled = [t for t in example.labels if t != IGNORE]
    reply = conversation[-1]["content"] + "<|im_end|>"
    assert tokenizer.decode(labelled, skip_special=False) == reply
    first = example.labels.index(labelled[0])
    assert tokenizer.decode(example.ids[:first], skip_special=False).endswith(
        "<|im_start|>assistant\n"
    )
