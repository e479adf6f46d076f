"""Decoding from a trained model: `generate` (KV-cache decoding and sampling), the decode setup
shared by sample, chat and serve (dtype, quantization, compile), `DecodeOptions`, and the
`lmforge sample` and `lmforge chat` commands."""
