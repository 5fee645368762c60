"""Build a tiny, randomly initialised Llama that vLLM can serve on a CPU in seconds.

Run with the vLLM environment's interpreter (it needs torch, transformers, tokenizers):

    .venv-vllm/bin/python tests/backends/vllm/tiny_model.py OUT_DIR

Nothing is downloaded: the byte-level BPE tokenizer is trained here on text generated
here, and the weights are random (seeded, so every build is the same model). The text
such a model writes is arbitrary; tests assert on protocol and token counts only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# A chat template keeps /v1/chat/completions usable (vLLM refuses chat requests for a
# tokenizer without one). Role markers are special tokens so the template costs a few
# tokens, not dozens of byte pieces.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB_SIZE = 512
HIDDEN = 128
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 512  # the tests' --max-model-len: a prompt + max_tokens beyond it is a 400


def corpus() -> list[str]:
    """Deterministic training text: enough variety for a few hundred BPE merges."""
    text = (
        "the gateway routes every request to a model server and streams tokens back "
        "canary champion challenger sticky user fallback retry latency throughput "
        "hello there how are you today please answer briefly say something short "
        "one two three four five six seven eight nine ten a quick brown fox jumps"
    )
    words = text.split(" ")
    lines = []
    for i in range(2000):
        # A fixed stride walks through word combinations without any randomness.
        lines.append(" ".join(words[(i * k) % len(words)] for k in range(1, 12)))
    return lines


def build(out: Path, hidden: int = HIDDEN, layers: int = LAYERS) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the vocabulary, so any prompt tokenizes (no unknown token).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    summary = {
        "dir": str(out),
        "vocab_size": tok.get_vocab_size(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    print(json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden size ({HIDDEN})")
    parser.add_argument("--layers", type=int, default=LAYERS, help=f"decoder layers ({LAYERS})")
    args = parser.parse_args(argv)
    build(args.out, args.hidden, args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
