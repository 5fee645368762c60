"""Synthetic chat requests for the drift demo, load scripts and tests.

Two populations with a known difference: `baseline_request` looks like the support
questions a model was trained on (short, plain English, one or two messages);
`shifted_request` like the traffic after a product launch abroad (long, multilingual,
full of order numbers, several turns, different sampling parameters). The demo's
reference data is `baseline_request` bodies run through the gateway's own text
descriptors (`switchyard-drift-demo --write-reference`).
"""

from __future__ import annotations

import random
from typing import Any

_WORDS = (
    "account", "order", "refund", "password", "reset", "delivery", "invoice", "card",
    "payment", "subscription", "cancel", "update", "address", "email", "login", "help",
    "please", "thanks", "where", "when", "how", "can", "my", "the", "is", "not", "working",
    "why", "was", "charged", "twice", "change", "plan", "shipping", "late", "package",
    "support", "question", "about", "billing", "app", "error", "message", "screen", "phone",
)  # fmt: skip
_FOREIGN = (
    "Bestellung", "Rückerstattung", "größe", "Lieferung", "commande", "remboursement",
    "envío", "añadir", "pedido", "注文", "返金", "配送", "Привет", "заказ", "доставка",
)  # fmt: skip
_SYSTEM = "You are a helpful support assistant for an online shop."


def baseline_request(rng: random.Random, route: str) -> dict[str, Any]:
    """A request like those the reference data was drawn from."""
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 24))]
    question = " ".join(words).capitalize() + "?"
    messages = [{"role": "user", "content": question}]
    if rng.random() < 0.5:
        messages.insert(0, {"role": "system", "content": _SYSTEM})
    return {
        "model": route,
        "messages": messages,
        "max_tokens": rng.choice((64, 128, 256)),
        "temperature": round(rng.uniform(0.1, 0.7), 2),
    }


def shifted_request(rng: random.Random, route: str) -> dict[str, Any]:
    """A request from the shifted population: every descriptor moves."""
    turns = []
    for _ in range(rng.randint(3, 7)):
        words = []
        for _ in range(rng.randint(40, 120)):
            roll = rng.random()
            if roll < 0.3:
                words.append(rng.choice(_FOREIGN))
            elif roll < 0.5:
                words.append(f"#{rng.randint(100000, 999999)}")
            elif roll < 0.6:
                words.append(rng.choice(_WORDS).upper())
            else:
                words.append(rng.choice(_WORDS))
        turns.append({"role": rng.choice(("user", "assistant")), "content": " ".join(words)})
    turns[-1]["role"] = "user"
    return {
        "model": route,
        "messages": turns,
        "max_tokens": rng.choice((1024, 2048)),
        "temperature": round(rng.uniform(0.9, 1.4), 2),
    }
