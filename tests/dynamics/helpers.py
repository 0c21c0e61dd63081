"""Independent references for the dynamics tests: per-document gradients by plain autograd."""

from __future__ import annotations

import torch

from bergson_core.model.tiny import train_tokenizer  # noqa: F401  (re-exported for tests)


def body_weights(model) -> list[torch.nn.Parameter]:
    """Weights of the transformer body's linear layers (what the index tracks by default: no LM
    head, no embeddings, no biases, no layer norms)."""
    return [p for n, p in model.named_parameters() if n.startswith("transformer.h.") and n.endswith("weight")
            and ".ln_" not in n]


def autograd_gradients(model, tok, texts: list[str]) -> torch.Tensor:
    """[N, P] full per-document gradients of the summed next-token loss, one backward per document."""
    import torch.nn.functional as F

    params = body_weights(model)
    rows = []
    for text in texts:
        ids = torch.tensor([tok([text])["input_ids"][0]])
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
