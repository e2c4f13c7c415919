"""Generation of patient dialogues: seeded batched sampling over a KV cache, cleaning, degeneracy
flags, the cache, and the generated-dialogues table (on a tiny random Llama)."""

from __future__ import annotations

import pytest
import torch

from hal_core.dialogue_generation import (
    DIALOGUE_COLUMNS,
    DegenerateRules,
    GenerationSpec,
    build_jobs,
    clean_patient_turn,
    degenerate_counts,
    degenerate_reason,
    dialogue_table,
    run_generation,
    whole_dialogue,
)
from hal_core.doctor_script import DoctorScript
from hal_core.generation import (
    ChatBatch,
    SamplingSettings,
    _seeded_row_sampler_class,
    complete_chats,
    shared_prefixes,
)
from hal_core.generation_cache import GenerationCache
from hal_core.personas import PersonaPrompt
from hal_core.tiny_model import TinyModelSpec, build_model, synthlabs_corpus, train_tokenizer

SPEC = TinyModelSpec(vocab_size=512, corpus_size=40)
SCRIPT = DoctorScript(
    version="test-v1",
    turns=(("Hi {first_name}, what brings you in?", "Hello {first_name}."), ("Since when?",)),
)


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    corpus = synthlabs_corpus(
        data_dir / "synthlabs" / "prompts_test.csv",
        data_dir / "synthlabs" / "candidates_test.csv",
        limit=SPEC.corpus_size,
    )
    return train_tokenizer(corpus, SPEC.vocab_size)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(SPEC, tokenizer)


@pytest.fixture()
def early_stopping(model, tokenizer):
    """A fifth of the 512 tokens end a turn, so rows of a batch stop at different steps."""
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *range(100, 200)]
    yield
    model.generation_config.eos_token_id = original


def persona(pid: str, name: str = "Ana Lima") -> PersonaPrompt:
    return PersonaPrompt(
        persona_id=pid,
        prompt=f"Write a visit for {name}.",
        name=name,
        biography=f"{name} is a 40-year-old baker.",
        condition="migraine",
        reason=f"{name.split()[0]} has headaches.",
    )


CHATS = [
    [{"role": "system", "content": "You are Ana."}, {"role": "user", "content": "Hi Ana!"}],
    [
        {"role": "system", "content": "You are Bob, who talks about his knees at length."},
        {"role": "user", "content": "Hello."},
    ],
    [{"role": "system", "content": "You are C."}, {"role": "user", "content": "How long?"}],
    [  # Bob again, asked something else: the card's tokens are encoded once for both
        {"role": "system", "content": "You are Bob, who talks about his knees at length."},
        {"role": "user", "content": "Good morning, what brings you in?"},
    ],
]
FOLLOW_UPS = [
    ["When?", "And then?"],
    ["Tell me more, please.", "Hm."],
    ["Go on.", "Anything else?"],
    ["I see.", "Since when?"],
]


def converse(model, tokenizer, rows, settings):
    """Three turns for the chats ``rows`` in one batch: replies per turn."""
    batch = ChatBatch(model, tokenizer, settings)
    batch.start([CHATS[i] for i in rows])
    replies = []
    for turn in range(3):
        if turn:
            batch.add_user_turn([FOLLOW_UPS[i][turn - 1] for i in rows])
        replies.append(batch.reply([1000 * i + turn for i in rows]))
    return replies, batch


def test_a_rows_replies_do_not_depend_on_its_batch(model, tokenizer, early_stopping):
    settings = SamplingSettings(
        temperature=1.0, top_p=0.9, repetition_penalty=1.3, max_new_tokens=12
    )
    rows = [0, 1, 2, 3]
    together, _ = converse(model, tokenizer, rows, settings)
    # Some turn has rows that stopped at different steps (padding after a row's end).
    assert any(
        len({reply.new_tokens for reply in turn}) > 1 and any(r.finished for r in turn)
        for turn in together
    )
    for position, row in enumerate(rows):
        alone, _ = converse(model, tokenizer, [row], settings)
        assert [turn[position] for turn in together] == [turn[0] for turn in alone]


def test_chats_that_open_alike_share_their_common_tokens():
    rows = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [7, 8], [1, 2, 3, 4, 5]]
    keys = ["card", "card", "other", "card"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hal_core.generation.MIN_SHARED_TOKENS", 2)
        prefixes, owners = shared_prefixes(rows, keys)
    assert prefixes == [[1, 2, 3], [7]] and owners == [0, 0, 1, 0]
    # Too little in common: every row is encoded on its own.
    assert shared_prefixes(rows, keys) == (rows, [0, 1, 2, 3])


def test_a_continued_cache_gives_what_a_full_recompute_gives(model, tokenizer, early_stopping):
    settings = SamplingSettings(temperature=0.0, repetition_penalty=2.0, max_new_tokens=10)
    _, batch = converse(model, tokenizer, [1], settings)
    batch.add_user_turn(["One more question?"])
    context = batch.ids[:, batch.mask[0].bool()]
    special = set(tokenizer.all_special_ids) | set(model.generation_config.eos_token_id)
    penalty = _seeded_row_sampler_class()([0], 0.0, 1.0, 2.0, context.shape[1], sorted(special))
    recomputed = model.generate(
        input_ids=context,
        attention_mask=torch.ones_like(context),
        max_new_tokens=10,
        do_sample=False,
        logits_processor=[penalty],
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )[0, context.shape[1] :].tolist()
    (reply,) = batch.reply([0])
    eos = set(model.generation_config.eos_token_id)
    end = next((i for i, t in enumerate(recomputed) if t in eos), len(recomputed))
    assert reply.new_tokens == end
    assert reply.text == tokenizer.decode(recomputed[:end], skip_special_tokens=True).strip()


def test_the_repetition_penalty_weighs_only_the_reply_being_written():
    sampler = _seeded_row_sampler_class()([0], 0.0, 1.0, 2.0, start=3, ignore_ids=[9])
    context = torch.tensor([[1, 2, 9, 4, 9, 4]])  # 1, 2, 9: the prompt; 4, 9, 4: the reply
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 4.0, -1.0, 0.0, 0.0, 0.0, 3.0]])
    penalised = sampler(context, scores.clone())
    assert penalised[0, 4] == 2.0  # said in this reply: halved
    assert penalised[0, 9] == 3.0  # a special token (end of turn): never penalised
    assert penalised[0, 1] == 2.0 and penalised[0, 2] == 2.0  # only in the prompt
    negative = sampler(torch.tensor([[1, 2, 9, 5]]), scores.clone())
    assert negative[0, 5] == -2.0


def test_same_seed_same_reply_other_seed_other_reply(model, tokenizer):
    settings = SamplingSettings(temperature=1.0, max_new_tokens=16)
    first = complete_chats(model, tokenizer, CHATS, [1, 2, 3, 4], settings)
    assert complete_chats(model, tokenizer, CHATS, [1, 2, 3, 4], settings) == first
    assert complete_chats(model, tokenizer, CHATS, [5, 6, 7, 8], settings) != first


@pytest.mark.parametrize(
    ("reply", "finished", "cleaned", "issues"),
    [
        ("P: I have a pain. It is so", False, "I have a pain.", ["truncated"]),
        ("Ana: Fine, thanks.", True, "Fine, thanks.", []),
        ("Hi.\nD: And then?\nP: Yes.", True, "Hi.", ["wrong_speaker_tags"]),
        ("Doctor: How are you?", True, "", ["wrong_speaker_tags"]),
        ("Sure. **Dr. Smith:** Good.", True, "Sure.", ["wrong_speaker_tags"]),
        ('"Well, not great."\nPatient: My head hurts.', True, 'Well, not great." My head', None),
    ],
)
def test_patient_turns_lose_tags_and_stop_where_the_doctor_would_speak(
    reply, finished, cleaned, issues
):
    text, found = clean_patient_turn(reply, persona("1"), finished)
    if issues is None:
        assert text.startswith(cleaned) and found == []
    else:
        assert (text, found) == (cleaned, issues)


@pytest.mark.parametrize(
    ("turns", "issues", "reason"),
    [
        (["", "  "], (), "empty"),
        (["", ""], ("wrong_speaker_tags",), "empty"),
        (["My head hurts a lot lately."], ("wrong_speaker_tags",), "wrong_speaker_tags"),
        (["My head hurts, doctor.", "My head hurts, doctor!"], (), "repeated_lines"),
        (["I am so tired today. I am so tired today. I am so tired today."], (), "repeated_lines"),
        ([" ".join(["I think that"] * 8)], (), "repeated_lines"),
        (["Yes.", "No.", "Maybe."], (), "too_short"),
        (["My head has hurt for two weeks now.", ""], (), "too_short"),
        (["My head has hurt for weeks.", "Since my new job started."], ("truncated",), ""),
    ],
)  # fmt: skip
def test_degenerate_dialogues_are_flagged_with_their_reason(turns, issues, reason):
    assert degenerate_reason(turns, issues) == reason


def test_degenerate_thresholds_are_settings():
    loop = ["I am so tired today. I am so tired today. I am so tired today."]
    assert degenerate_reason(loop, rules=DegenerateRules(max_sentence_repeats=3)) == ""
    assert degenerate_reason(["Yes, it hurts."], rules=DegenerateRules(min_patient_words=3)) == ""


def test_whole_dialogues_become_p_and_d_lines_or_are_flagged():
    item = whole_dialogue("Sure! Here it is.\nPatient: Hi.\nDoctor: Hello.\n**P:** My knee.\n")
    assert item.dialogue == "P: Hi.\nD: Hello.\nP: My knee."
    assert item.patient_turns == ("Hi.", "My knee.")
    only_doctor = whole_dialogue("D: Hello.\nD: Anyone?")
    assert only_doctor.issues == ("wrong_speaker_tags",)
    assert degenerate_reason(only_doctor.patient_turns, only_doctor.issues) == "empty"
    assert whole_dialogue("").issues == ()


def test_a_cached_run_generates_nothing_again_and_tables_follow_the_contract(
    model, tokenizer, tmp_path
):
    spec = GenerationSpec(
        n_turns=2,
        sampling=SamplingSettings(n_candidates=2, max_new_tokens=6, batch_size=3, seed=5),
    )
    personas = [persona("11"), persona("12", "Bo Chen")]
    jobs = build_jobs(personas, spec, "policy-a", SCRIPT)
    assert len({job.key for job in jobs}) == 4
    with GenerationCache(tmp_path / "g.sqlite") as cache:
        first, stats = run_generation(model, tokenizer, jobs, spec, cache, "policy-a", SCRIPT)
        assert (stats.generated, stats.cached, stats.dialogues) == (4, 0, 4)
        again, stats = run_generation(None, None, jobs, spec, cache, "policy-a", SCRIPT)
        assert (stats.generated, stats.cached) == (0, 4)
        assert [d.dialogue for d in again] == [d.dialogue for d in first]
        assert all(d.writes == 1 and d.cached for d in again)
    table = dialogue_table(jobs, again, spec, "hal-tiny-llama", "base", 0, SCRIPT)
    assert tuple(table.columns) == DIALOGUE_COLUMNS
    assert table["dialogue_id"].tolist() == [
        "11-base-s5-0",
        "11-base-s5-1",
        "12-base-s5-0",
        "12-base-s5-1",
    ]
    assert (table["prompt_id"] == table["persona_id"]).all()
    assert (table["doctor_script"] == SCRIPT.fingerprint).all()
    # A persona's samples meet the same doctor under the same card, so they pair for DPO.
    assert (
        jobs[0].doctor_lines == jobs[1].doctor_lines
        and jobs[2].doctor_lines == jobs[3].doctor_lines
    )
    assert table["system_prompt"].tolist() == [job.system for job in jobs]
    assert table["system_prompt"].iloc[0].startswith("You are ")
    for text in table["dialogue"]:
        tags = [line[:2] for line in text.split("\n")]
        assert tags == ["D:", "P:", "D:", "P:"]
    assert set(degenerate_counts(table)) == {
        "empty",
        "wrong_speaker_tags",
        "repeated_lines",
        "too_short",
    }
    # A different seed, policy or doctor script is a different dialogue; the batch size is not.
    keys = {job.key for job in jobs}
    reseeded = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"seed": 6})})
    rebatched = spec.model_copy(
        update={"sampling": spec.sampling.model_copy(update={"batch_size": 1})}
    )
    script_v2 = SCRIPT.model_copy(update={"version": "v2"})
    assert not {job.key for job in build_jobs(personas, reseeded, "policy-a", SCRIPT)} & keys
    assert not {job.key for job in build_jobs(personas, spec, "policy-b", SCRIPT)} & keys
    assert not {job.key for job in build_jobs(personas, spec, "policy-a", script_v2)} & keys
    assert {job.key for job in build_jobs(personas, rebatched, "policy-a", SCRIPT)} == keys


def test_int8_dynamic_policies_swap_their_linear_layers(data_dir, tmp_path):
    from hal_core.generation import load_policy
    from hal_core.tiny_model import save_tiny_model

    corpus = synthlabs_corpus(
        data_dir / "synthlabs" / "prompts_test.csv",
        data_dir / "synthlabs" / "candidates_test.csv",
        limit=SPEC.corpus_size,
    )
    folder = save_tiny_model(tmp_path / "tiny", corpus, SPEC)
    quantised, tokenizer = load_policy(str(folder), dtype="int8-dynamic", device="cpu")
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(module) is torch.nn.Linear for module in quantised.modules())
    assert sum(isinstance(module, dynamic) for module in quantised.modules()) == 15  # 7x2 + head
    (reply,) = complete_chats(quantised, tokenizer, CHATS[:1], [0], SamplingSettings())
    assert reply.new_tokens > 0
    with pytest.raises(ValueError, match="CPU only"):
        load_policy(str(folder), dtype="int8-dynamic", device="cuda")


def test_file_digests_are_memoised_by_path_size_and_time(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"abc")
    with GenerationCache(tmp_path / "g.sqlite") as cache:
        first = cache.file_digest(weights)
        assert cache.file_digest(weights) == first
        weights.write_bytes(b"abcd")
        assert cache.file_digest(weights) != first
