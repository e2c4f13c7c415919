"""The hf judge with a tiny random Llama built locally (no downloads): valid, deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal_core.dialogue import SpeakerTags
from hal_core.judges import HFJudgeConfig, build_judge
from hal_core.judging import Game
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.tiny_model import TinyModelSpec, save_tiny_model

TAGS = SpeakerTags.turing()
QUESTIONNAIRE = Questionnaire(
    name="mini",
    traits=(
        Trait(id="t01", text="Replies are brief and casual."),
        Trait(id="t02", text="Uses slang or abbreviations."),
        Trait(id="t05", text="Uses emojis."),
    ),
)
DIALOGUES = [
    "I: hi, how are you today?\nW: good u?\nI: fine. where are you from?\nW: ohio lol",
    "I: what is 2+2?\nW: It is 4. Is there anything else I can help you with today?",
    "I: tell me a joke\nW: why did the chicken cross the road\nW: idk either haha",
]
CORPUS = [*DIALOGUES, *(t.text for t in QUESTIONNAIRE.traits)] * 4
SPEC = TinyModelSpec(
    vocab_size=1024, hidden_size=32, intermediate_size=64, max_position_embeddings=2048, seed=7
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "a": save_tiny_model(root / "a", CORPUS, SPEC),
        "same_seed": save_tiny_model(root / "b", CORPUS, SPEC),
        "other_seed": save_tiny_model(root / "c", CORPUS, SPEC.model_copy(update={"seed": 8})),
    }


def _judge(path: Path, **overrides):
    return build_judge(HFJudgeConfig(model_path=str(path), **overrides))


def test_ratings_are_valid_digits_with_expected_values(tiny_models) -> None:
    judge = _judge(tiny_models["a"], batch_size=4)
    results = judge.rate([*DIALOGUES, "I: hello? anyone?"], QUESTIONNAIRE, TAGS)
    assert [r.ok for r in results] == [True, True, True, False]
    assert results[3].error_kind == "input"
    for result in results[:3]:
        assert set(result.ratings) == set(QUESTIONNAIRE.trait_ids) == set(result.expected)
        assert all(value in {1.0, 2.0, 3.0, 4.0, 5.0} for value in result.ratings.values())
        assert all(1.0 <= value <= 5.0 for value in result.expected.values())


def test_same_seed_gives_the_same_model_fingerprint_and_ratings(tiny_models) -> None:
    first = _judge(tiny_models["a"], batch_size=4)
    second = _judge(tiny_models["same_seed"], batch_size=1)
    other = _judge(tiny_models["other_seed"], batch_size=4)
    assert first.fingerprint() == second.fingerprint() != other.fingerprint()
    a = first.rate(DIALOGUES, QUESTIONNAIRE, TAGS)
    b = second.rate(DIALOGUES, QUESTIONNAIRE, TAGS)
    assert [r.ratings for r in a] == [r.ratings for r in b]  # batch size does not matter
    for left, right in zip(a, b, strict=True):
        for trait_id in QUESTIONNAIRE.trait_ids:
            assert left.expected[trait_id] == pytest.approx(right.expected[trait_id], abs=1e-5)
    assert [r.expected for r in other.rate(DIALOGUES, QUESTIONNAIRE, TAGS)] != [
        r.expected for r in a
    ]


def test_long_dialogues_are_shortened_to_fit_the_context(tiny_models) -> None:
    judge = _judge(tiny_models["a"], max_length=1200)
    long_dialogue = "\n".join(f"I: question {i}?\nW: answer number {i} ok" for i in range(200))
    [result] = judge.rate([long_dialogue], QUESTIONNAIRE, TAGS)
    assert result.ok, result.error


def test_statement_proposals_from_an_untrained_model_are_recorded_errors(tiny_models) -> None:
    judge = _judge(tiny_models["a"], max_new_tokens=8)
    [proposal] = judge.propose_statements(
        [Game(game_id="g1", transcript_a=DIALOGUES[0], transcript_b=DIALOGUES[1])], TAGS
    )
    assert proposal.game_id == "g1" and not proposal.ok
    assert proposal.error.startswith("invalid reply") and proposal.verdict is None


def test_a_game_longer_than_the_context_is_an_input_failure_not_a_cut_prompt(tiny_models) -> None:
    judge = _judge(tiny_models["a"], max_length=600, max_new_tokens=64)
    long_game = "\n".join(f"I: question {i}?\nW: answer number {i} ok" for i in range(200))
    [proposal] = judge.propose_statements(
        [Game(game_id="g1", transcript_a=long_game, transcript_b=DIALOGUES[1])], TAGS
    )
    assert proposal.error_kind == "input" and "536 beside 64 new tokens" in proposal.error


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_a_shared_prefix_cache_gives_the_ratings_of_full_prompts(tiny_models, batch_size) -> None:
    full = _judge(tiny_models["a"], share_prefix=False).rate(DIALOGUES, QUESTIONNAIRE, TAGS)
    shared_judge = _judge(tiny_models["a"], batch_size=batch_size)
    shared = shared_judge.rate(DIALOGUES, QUESTIONNAIRE, TAGS)
    assert shared_judge.fingerprint() == _judge(tiny_models["a"], share_prefix=False).fingerprint()
    for left, right in zip(full, shared, strict=True):
        assert left.ratings == right.ratings
        for trait_id in QUESTIONNAIRE.trait_ids:
            assert left.expected[trait_id] == pytest.approx(right.expected[trait_id], abs=1e-5)
