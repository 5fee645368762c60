"""Build a tiny random LoRA adapter for the tiny Llama (tiny_model.py), as PEFT saves one.

Run with the vLLM environment's interpreter (it needs torch and safetensors):

    .venv-vllm/bin/python tests/backends/vllm/tiny_lora.py BASE_DIR OUT_DIR

Nothing is downloaded. The two files are PEFT's own layout, written here without PEFT
(one dependency fewer in the vLLM stage): `adapter_config.json` with PEFT's LoraConfig
fields and `adapter_model.safetensors` with PEFT's tensor names
(`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, shape rank x in;
`...lora_B.weight`, out x rank), rank 8 on q_proj and v_proj of every layer.

PEFT starts `lora_B` at zero, which makes a fresh adapter answer exactly like its base
model; here both matrices are random (PEFT's `init_lora_weights=False`), and large
enough that the adapter's greedy answers differ from the base model's, so a test can
tell from the text alone which of the two answered.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RANK = 8
ALPHA = 16
TARGETS = ("q_proj", "v_proj")


def build(base: Path, out: Path, rank: int = RANK, seed: int = 1) -> None:
    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    out_features = {"q_proj": heads * head_dim, "v_proj": kv_heads * head_dim}

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            # Kaiming-like A (PEFT's own init for A) and a B of the same scale: the
            # update B @ A * alpha / rank is then as large as the base weights.
            a = torch.randn(rank, hidden, generator=generator) / hidden**0.5
            b = torch.randn(out_features[module], rank, generator=generator) / rank**0.5
            tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.contiguous()

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    # The fields PEFT's LoraConfig.save_pretrained writes that matter to a loader;
    # vLLM reads r, lora_alpha, target_modules and refuses unsupported features.
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    print(json.dumps({"dir": str(out), "tensors": len(tensors), "rank": rank}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the tiny model's directory (tiny_model.py)")
    parser.add_argument("out", type=Path, help="directory to write the adapter into")
    parser.add_argument("--rank", type=int, default=RANK, help=f"LoRA rank ({RANK})")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    args = parser.parse_args(argv)
    build(args.base, args.out, args.rank, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
