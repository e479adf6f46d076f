"""Other projects' file formats, read and mapped: Hugging Face config.json, weights and tokenizer
files, GGUF files and their tokenizers.

Pure conversions between their layouts and lmforge's (configs, state dicts, tokenizers): nothing
here writes an lmforge checkpoint directory. That is what sits below `checkpoint/` (which starts
runs from a GGUF or an HF directory) and `finetune/`; the `convert` and `export` commands that
write whole directories live above, in `interop/`.
"""
