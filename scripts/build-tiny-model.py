"""Build a tiny random-weight Llama (model + tokenizer + chat template) for live tests against a real vLLM.

No weights can be downloaded here, so `make test-live` builds its own model: a BPE tokenizer trained with
`tokenizers` on local text (this repository's docs and sources, plus a fixed generated corpus so the
vocabulary never depends on what the docs say today), a chat template, and a 2-layer Llama with random
weights from `transformers`. The text it generates is noise; what matters is that vLLM serves it with real
tokenization, real paged attention, prefix caching and KV events.

Shape (why): hidden 128 with 2 heads gives head_dim 64, a size vLLM's CPU attention backend supports; 2 layers
keep each forward pass to a few milliseconds on one core; max_position_embeddings 4096 leaves room for prompts
of a few thousand tokens. Weights are float32 (~2.5 MB), so vLLM needs no dtype conversion.

Run with the live venv (it has transformers and tokenizers):
`.live/venv/bin/python scripts/build-tiny-model.py .live/tiny-llama`.
Idempotent: an existing complete model directory is kept unless `--force`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

VOCAB_SIZE = 2048
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|end|>"]
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def corpus(repo: Path) -> Iterator[str]:
    """Local text: the repo's docs and sources, then a seeded word salad so the vocabulary is never tiny."""
    for pattern in ("docs/*.md", "README.md", "src/eksinfer/**/*.py"):
        for path in sorted(repo.glob(pattern)):
            yield path.read_text(encoding="utf-8", errors="replace")
    rng = random.Random(0)
    words = [
        "the",
        "a",
        "cache",
        "block",
        "prefix",
        "token",
        "model",
        "engine",
        "request",
        "route",
        "replica",
        "event",
        "hash",
    ]
    for _ in range(2000):
        yield " ".join(rng.choice(words) for _ in range(30))


def build_tokenizer(repo: Path, out: Path) -> int:
    """Train a byte-level BPE, add BOS on every encode (as Llama does), write tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(repo), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|end|>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {"bos_token": "<s>", "eos_token": "<|end|>", "unk_token": "<unk>", "pad_token": "</s>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return int(tok.get_vocab_size())


def build_model(out: Path, vocab_size: int, bos_id: int, eos_id: int) -> None:
    """Random-weight LlamaForCausalLM saved as safetensors (float32)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=2,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=2).save_pretrained(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="model directory to create, e.g. .live/tiny-llama")
    parser.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    args = parser.parse_args(argv)
    out: Path = args.out
    if not args.force and all((out / name).is_file() for name in REQUIRED_FILES):
        print(f"tiny model: {out} already built, reused")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    vocab_size = build_tokenizer(repo, out)
    tokens = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    build_model(out, vocab_size, bos_id=tokens["<s>"], eos_id=tokens["<|end|>"])
    print(f"tiny model: built {out} (vocab {vocab_size}, 2 layers, hidden 128)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
