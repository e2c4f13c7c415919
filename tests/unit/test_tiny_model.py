"""The tiny Llama: seeded, small, with a tokenizer trained on our dialogues and a chat template."""

from __future__ import annotations

import pytest
import torch

from hal_core.policy_model import resolve_policy_model
from hal_core.tiny_model import (
    TINY_MODEL_NAME,
    TinyModelSpec,
    build_model,
    count,
    save_tiny_model,
    synthlabs_corpus,
    train_tokenizer,
)

SPEC = TinyModelSpec(vocab_size=512, corpus_size=40)


@pytest.fixture(scope="module")
def corpus(data_dir) -> list[str]:
    return synthlabs_corpus(
        data_dir / "synthlabs" / "prompts_test.csv",
        data_dir / "synthlabs" / "candidates_test.csv",
        limit=SPEC.corpus_size,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus, SPEC.vocab_size)


def test_corpus_interleaves_dialogues_and_prompts(corpus):
    assert corpus[0].lstrip().startswith("P:")
    assert "Generate a full conversation" in corpus[1]


def test_tokenizer_round_trips_text_it_never_saw(tokenizer):
    text = "P: Honestly doc, I'm kinda freaked out 😅 — my knee's been clicking since Tuesday!!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == SPEC.vocab_size


def test_chat_prompt_is_a_prefix_of_prompt_plus_answer(tokenizer):
    prompt = [{"role": "user", "content": "Write a doctor's visit for Ana."}]
    answer = [{"role": "assistant", "content": "P: Hi doctor.\nD: Hello Ana."}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + answer)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == tokenizer.eos_token_id
    assert prompt_ids[0] == tokenizer.bos_token_id


def test_same_seed_same_weights_other_seed_other_weights(tokenizer):
    first = build_model(SPEC, tokenizer).state_dict()
    second = build_model(SPEC, tokenizer).state_dict()
    other = build_model(SPEC.model_copy(update={"seed": 1}), tokenizer).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first[name], second[name])
    assert not torch.equal(first[name], other[name])


def test_default_size_is_tiny_and_generates(tokenizer):
    model = build_model(TinyModelSpec(vocab_size=SPEC.vocab_size), tokenizer)
    assert 50_000 < count(model) < 1_000_000
    assert model.config.model_type == "llama"
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt"
    )
    output = model.generate(**encoded, max_new_tokens=5, do_sample=False)
    assert output.shape[1] == encoded["input_ids"].shape[1] + 5


def test_saved_model_loads_with_auto_classes(tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_tiny_model(tmp_path / "tiny", corpus, SPEC)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_hub_ids_pass_through_and_the_tiny_model_is_built_once(tmp_path, corpus):
    assert resolve_policy_model("meta-llama/Llama-3.2-1B-Instruct", tmp_path) == (
        "meta-llama/Llama-3.2-1B-Instruct"
    )
    with pytest.raises(ValueError, match="no corpus"):
        resolve_policy_model(TINY_MODEL_NAME, tmp_path / "empty", corpus=None, spec=SPEC)
    built = resolve_policy_model(TINY_MODEL_NAME, tmp_path, corpus, SPEC)
    assert resolve_policy_model(TINY_MODEL_NAME, tmp_path, None, SPEC) == built


def test_candidates_come_from_batched_generate_or_a_completion_callable(tokenizer):
    import pandas as pd

    from hal_core.generation import (
        SamplingSettings,
        generate_candidates_local,
        generate_candidates_remote,
    )

    prompts = pd.DataFrame({"prompt_id": ["1", "2", "3"], "prompt": ["a visit", "b", "c visit"]})
    settings = SamplingSettings(n_candidates=2, max_new_tokens=4, batch_size=2)
    local = generate_candidates_local(
        prompts, build_model(SPEC, tokenizer), tokenizer, settings, "tiny"
    )
    assert list(local["prompt_id"]) == ["1", "1", "2", "2", "3", "3"]
    assert local["candidate_id"].is_unique
    assert local["response"].map(lambda text: isinstance(text, str)).all()

    calls = iter([RuntimeError("endpoint down"), "P: hi", "P: hey", "P: yo", "P: ok", "P: so"])

    def complete(prompt: str) -> str:
        answer = next(calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    remote = generate_candidates_remote(prompts, complete, settings, "endpoint")
    assert remote["response"].tolist()[0] == "" and "endpoint down" in remote["error"].tolist()[0]
    assert remote["response"].tolist()[1:] == ["P: hi", "P: hey", "P: yo", "P: ok", "P: so"]
