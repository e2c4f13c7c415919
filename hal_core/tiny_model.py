"""A tiny Llama-architecture policy for CPU tests and demos, or any hub model id for real runs.

The tiny model is random-initialised from a :class:`~transformers.LlamaConfig` with a fixed seed,
and its byte-level BPE tokenizer is trained with ``tokenizers`` on our own dialogues (persona
prompts and candidate conversations), so nothing is downloaded. It carries a chat template, so
the training script treats it exactly like ``meta-llama/Llama-3.2-1B-Instruct``:
:func:`hal_core.policy_model.resolve_policy_model` turns :data:`TINY_MODEL_NAME` into the folder
:func:`tiny_model_folder` builds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

TINY_MODEL_NAME = "hal-tiny-llama"
"""The model name that asks for the tiny model instead of a hub id or folder."""

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
ROLE_START = "<|start_header_id|>"
ROLE_END = "<|end_header_id|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, ROLE_START, ROLE_END)

# Llama-3 style: the rendered prompt with add_generation_prompt is a prefix of prompt + answer,
# which DPO needs to find where the completion starts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


class TinyModelSpec(BaseModel):
    """Shape of the tiny Llama and its tokenizer (about 0.2M parameters by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(default=2048, ge=256, description="BPE vocabulary size.")
    hidden_size: int = Field(default=64, ge=8, description="Model width.")
    intermediate_size: int = Field(default=128, ge=8, description="MLP width.")
    num_hidden_layers: int = Field(default=2, ge=1, description="Decoder layers.")
    num_attention_heads: int = Field(default=4, ge=1, description="Attention heads.")
    num_key_value_heads: int = Field(default=2, ge=1, description="Grouped KV heads.")
    max_position_embeddings: int = Field(default=1024, ge=64, description="Context length.")
    tie_word_embeddings: bool = Field(default=True, description="Share input/output embeddings.")
    seed: int = Field(default=0, description="Seed of the random initialisation.")
    corpus_size: int = Field(
        default=600, ge=10, description="How many of our texts train the tokenizer (fixed order)."
    )

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def synthlabs_corpus(
    prompts_path: str | Path, candidates_path: str | Path, limit: int | None = None
) -> list[str]:
    """Persona prompts and candidate dialogues interleaved, in file order (the tokenizer corpus)."""
    prompts = pd.read_csv(prompts_path)["prompt"].dropna().astype(str).tolist()
    dialogues = pd.read_csv(candidates_path)["dialogue"].dropna().astype(str).tolist()
    texts: list[str] = []
    for index in range(max(len(prompts), len(dialogues))):
        if index < len(dialogues):
            texts.append(dialogues[index])
        if index < len(prompts):
            texts.append(prompts[index])
    return texts if limit is None else texts[:limit]


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, with Llama-3 style chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=1_000_000,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_model(spec: TinyModelSpec, tokenizer):
    """A randomly initialised LlamaForCausalLM; the same spec and seed give the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_tiny_model(folder: str | Path, texts: Sequence[str], spec: TinyModelSpec) -> Path:
    """Train the tokenizer, build the model and ``save_pretrained`` both into ``folder``."""
    folder = Path(folder)
    tokenizer = train_tokenizer(texts[: spec.corpus_size], spec.vocab_size)
    model = build_model(spec, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    corpus_hash = hashlib.sha256("\x1e".join(texts[: spec.corpus_size]).encode()).hexdigest()
    (folder / "hal_tiny_model.json").write_text(
        json.dumps(
            {"spec": spec.model_dump(), "corpus_sha256": corpus_hash, "n_parameters": count(model)},
            indent=2,
        )
    )
    return folder


def count(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def tiny_model_folder(
    models_dir: str | Path,
    corpus: Sequence[str] | None = None,
    spec: TinyModelSpec | None = None,
) -> Path:
    """The tiny model's folder ``models_dir/<name>-<spec fingerprint>``, built from ``corpus``
    the first time it is asked for (policy references go through
    :func:`hal_core.policy_model.resolve_policy_model`)."""
    spec = spec or TinyModelSpec()
    folder = Path(models_dir) / f"{TINY_MODEL_NAME}-{spec.fingerprint}"
    if (folder / "hal_tiny_model.json").is_file():
        return folder
    if not corpus:
        raise ValueError(
            f"{TINY_MODEL_NAME} is not built yet at {folder} and no corpus was given to train "
            "its tokenizer on"
        )
    return save_tiny_model(folder, corpus, spec)
