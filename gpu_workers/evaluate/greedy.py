"""Greedy answers, two ways: teacher-forced (one pass) when only an exact match matters, decoding when
the text itself is scored.

Greedy decoding reproduces an answer of k tokens exactly iff, at each of the k positions, the argmax
given the prompt and the *correct* earlier answer tokens is the next answer token; so one forward
pass over prompt + answer decides an exact match without a decoding loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@torch.no_grad()
def answer_positions_logits(model: PreTrainedModel, prompt: Sequence[int], answer: Sequence[int],
                            device: torch.device) -> torch.Tensor:
    """Logits (float32, shape (len(answer), vocab)) predicting each answer token after prompt + earlier answer."""
    ids = torch.tensor([list(prompt) + list(answer)], device=device)
    hidden = model.base_model(input_ids=ids).last_hidden_state[0]
    first = len(prompt) - 1
    return model.get_output_embeddings()(hidden[first : first + len(answer)]).float()


def greedy_prefix_match(model: PreTrainedModel, prompt: Sequence[int], answer: Sequence[int],
                        device: torch.device) -> int:
    """How many leading answer tokens greedy decoding would produce (len(answer) = exact)."""
    predicted = answer_positions_logits(model, prompt, answer, device).argmax(-1).tolist()
    matched = 0
    for want, got in zip(answer, predicted, strict=True):
        if want != got:
            break
        matched += 1
    return matched


@torch.no_grad()
def greedy_decode(model: PreTrainedModel, ids: Sequence[int], max_new_tokens: int, device: torch.device,
                  past: Any = None) -> list[int]:
    """Greedy continuation of *ids* (which follow the tokens already in *past*, if given)."""
    from transformers import DynamicCache

    cache = past if past is not None else DynamicCache()
    step = torch.tensor([list(ids)], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        result = model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = result.past_key_values
        token = int(result.logits[0, -1].argmax())
        out.append(token)
        step = torch.tensor([[token]], device=device)
    return out


@torch.no_grad()
def prefill(model: PreTrainedModel, ids: Sequence[int], device: torch.device) -> Any:
    """The KV cache of *ids*: every prefix of it is exactly the cache of that prefix (causality)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=torch.tensor([list(ids)], device=device), past_key_values=cache, use_cache=True,
          logits_to_keep=1)
    return cache


def cache_prefix(cache: Any, length: int) -> Any:
    """A new cache holding the first *length* positions of *cache*; the original is left untouched."""
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[..., :length, :], layer.values[..., :length, :]) for layer in cache.layers])
