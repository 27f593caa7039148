"""``--model-id demo``: a tiny Llama with a trained BPE tokenizer and demo adapters, built offline.

Built once into the cache dir (about a second on a laptop CPU) and then served like any local
checkpoint. The weights are random, so the text is gibberish, but every code path is real: the
tokenizer is a byte-level BPE trained on the embedded text, the chat template is a Jinja template,
and the adapters are PEFT-format directories (``adapter_config.json`` + safetensors) written
without importing peft.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

DEMO_VERSION = "v1"
DEMO_ADAPTERS = ("pirate", "shakespeare")

_CORPUS = """\
LoRAX serves thousands of fine-tuned adapters on top of one base model. Each request names the
adapter it wants, and the server batches requests for different adapters together on one GPU.
The engine keeps the key and value cache in fixed-size blocks, so memory is never wasted on
padding, and a scheduler admits new requests between steps. Arr, matey! The pirate adapter speaks
like a sailor of the seven seas, hoisting the sails and hunting for treasure on a distant island.
Shall I compare thee to a summer's day? Thou art more lovely and more temperate. Rough winds do
shake the darling buds of May, and summer's lease hath all too short a date.
The quick brown fox jumps over the lazy dog. Hello, world! How are you today? I am fine, thank you.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # $ %.
JSON looks like {"name": "lorax", "adapters": [1, 2, 3], "fast": true, "note": null}.
Unicode: café, naïve, über, 日本語, emoji 🙂.
"""

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_SPECIAL = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]


def default_cache_dir() -> Path:
    env = os.environ.get("LORAX_ENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lorax-engine"


def train_tokenizer(out_dir: Path, vocab_size: int = 512) -> int:
    """Train a byte-level BPE on the embedded corpus and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=_SPECIAL[4:],
    )
    fast.chat_template = _CHAT_TEMPLATE
    # Prepend <s> like Llama tokenizers do.
    from tokenizers import processors

    bos = fast.convert_tokens_to_ids("<s>")
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast.save_pretrained(str(out_dir))
    return len(fast)


def _config(vocab_size: int, bos: int, eos: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def _random_weights(cfg: dict[str, object], gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, inter, v = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["vocab_size"])  # type: ignore[arg-type]
    kv = int(cfg["num_key_value_heads"]) * int(cfg["head_dim"])  # type: ignore[arg-type]

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.08

    w = {
        "model.embed_tokens.weight": rnd(v, h),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": rnd(v, h),
    }
    for i in range(int(cfg["num_hidden_layers"])):  # type: ignore[arg-type]
        p = f"model.layers.{i}."
        w |= {
            p + "self_attn.q_proj.weight": rnd(h, h),
            p + "self_attn.k_proj.weight": rnd(kv, h),
            p + "self_attn.v_proj.weight": rnd(kv, h),
            p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(inter, h),
            p + "mlp.up_proj.weight": rnd(inter, h),
            p + "mlp.down_proj.weight": rnd(h, inter),
            p + "input_layernorm.weight": torch.ones(h),
            p + "post_attention_layernorm.weight": torch.ones(h),
        }
    return w


def write_demo_adapter(out_dir: Path, cfg: dict[str, object], rank: int, seed: int) -> None:
    """A PEFT LoRA adapter (q/v/o/gate/up/down) with nonzero A and B, in PEFT's file layout."""
    gen = torch.Generator().manual_seed(seed)
    h, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])  # type: ignore[arg-type]
    kv = int(cfg["num_key_value_heads"]) * int(cfg["head_dim"])  # type: ignore[arg-type]
    shapes = {
        "self_attn.q_proj": (h, h),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (h, inter),
        "mlp.up_proj": (h, inter),
        "mlp.down_proj": (inter, h),
    }
    tensors: dict[str, torch.Tensor] = {}
    for i in range(int(cfg["num_hidden_layers"])):  # type: ignore[arg-type]
        for module, (fan_in, fan_out) in shapes.items():
            base = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{base}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) * 0.2
            tensors[f"{base}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.2
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "demo",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "target_modules": sorted(m.split(".")[-1] for m in shapes),
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))


def build_demo(cache_dir: Path | None = None) -> Path:
    """Return the demo checkpoint directory, building it first if needed (atomic, no network).

    Adapters land in ``<dir>/adapters/demo/<name>``, so a local adapter root of ``<dir>/adapters``
    resolves the ids ``demo/pirate`` and ``demo/shakespeare``.
    """
    root = (cache_dir or default_cache_dir()) / f"demo-{DEMO_VERSION}"
    if (root / "config.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        vocab = train_tokenizer(tmp)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tmp))
        cfg = _config(vocab, tok.bos_token_id, tok.eos_token_id)
        gen = torch.Generator().manual_seed(1234)
        save_file(
            _random_weights(cfg, gen), str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id})
        )
        for i, name in enumerate(DEMO_ADAPTERS):
            write_demo_adapter(tmp / "adapters" / "demo" / name, cfg, rank=8, seed=100 + i)
        try:
            tmp.rename(root)
        except OSError:  # another process built it first
            if not (root / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
