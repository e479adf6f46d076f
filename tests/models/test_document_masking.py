"""Packed documents: with document_ids a packed row's logits equal each document run alone."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_model

from lmforge.data.loader import document_layout

EOT = 0


def packed_row(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One row of documents, each ending in EOT (the last one cut short, as in a window)."""
    generator = torch.Generator().manual_seed(seed)
    documents = []
    for length in lengths:
        doc = torch.randint(1, 97, (length,), generator=generator)
        doc[-1] = EOT
        documents.append(doc)
    documents[-1] = documents[-1][:-1]  # a window usually ends mid-document
    return torch.cat(documents)[None], documents


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_packed_documents_equal_separate_runs(preset):
    model = build(tiny_model(preset))
    tokens, documents = packed_row([7, 12, 10])
    document_ids, positions = document_layout(tokens, EOT)
    assert document_ids.tolist() == [[0] * 7 + [1] * 12 + [2] * 9]
    assert positions.tolist() == [list(range(7)) + list(range(12)) + list(range(9))]
    with torch.no_grad():
        packed = model(tokens, positions=positions, document_ids=document_ids)[0]
        separate = torch.cat([model(doc[None])[0] for doc in documents])
        plain = model(tokens)[0]
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=0)
    # Without masking later documents see earlier ones: the check above can fail.
    assert not torch.allclose(plain[7:], separate[7:], atol=1e-3)
    torch.testing.assert_close(plain[:7], separate[:7], atol=1e-5, rtol=0)


def test_batched_rows_have_their_own_layouts():
    model = build(tiny_model())
    first, _ = packed_row([5, 20], seed=1)
    second, _ = packed_row([16, 9], seed=2)
    tokens = torch.cat([first, second[:, :24]])
    document_ids, positions = document_layout(tokens, EOT)
    with torch.no_grad():
        both = model(tokens, positions=positions, document_ids=document_ids)
        for row in range(2):
            alone = model(
                tokens[row : row + 1],
                positions=positions[row : row + 1],
                document_ids=document_ids[row : row + 1],
            )
            torch.testing.assert_close(both[row : row + 1], alone, atol=1e-5, rtol=0)


def test_single_document_mask_equals_the_causal_fast_path():
    model = build(tiny_model())
    tokens = torch.randint(1, 97, (2, 16))
    ids, positions = document_layout(tokens, EOT)
    with torch.no_grad():
        masked = model(tokens, positions=positions, document_ids=ids)
        torch.testing.assert_close(masked, model(tokens), atol=1e-5, rtol=0)
