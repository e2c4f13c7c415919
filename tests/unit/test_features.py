"""Speaker parsing of untidy dialogues and the local judge's features."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.dialogue import SpeakerTags, parse_dialogue, parse_turns, rated_turns
from hal_core.features import (
    STYLE_FEATURES,
    DialogueFeaturizer,
    FeatureConfig,
    chunk_turns,
    spaced_indices,
    style_features,
    turn_heads,
)

DOCTOR = SpeakerTags.doctor_visit()


def _rated(text: str, tags: SpeakerTags = DOCTOR) -> list[str]:
    parsed = parse_dialogue(text, tags)
    assert parsed.ok, parsed.error
    return parsed.rated_texts


def test_plain_and_spelled_out_tags() -> None:
    assert _rated("P: my knee hurts\nD: since when?\nP: a week") == ["my knee hurts", "a week"]
    text = "Doctor: Hello.\nPatient: hi doc\nDoctor: Tell me more.\nPatient: it aches"
    assert _rated(text) == ["hi doc", "it aches"]


def test_numbered_bold_spaced_and_stage_direction_tags() -> None:
    text = (
        "1. **D:** What brings you in?\n"
        "2. **P:** my back\n"
        "3) **Patient**: it's been weeks\n"
        "P (sighing): and it keeps me up\n"
        "P : sorry, long story\n"
        "4. Dr. Patel: Let's take a look."
    )
    parsed = parse_dialogue(text, DOCTOR)
    assert parsed.ok
    assert parsed.rated_texts == [
        "my back",
        "it's been weeks",
        "and it keeps me up",
        "sorry, long story",
    ]
    assert [t.speaker for t in parsed.turns if not t.rated] == ["D", "Dr. Patel"]


def test_patient_speaking_under_their_name_is_found() -> None:
    text = (
        "Doctor: Hi Sofia, what's going on?\n"
        "Sofia: They hurt, a lot.\n"
        "Doctor: Since when?\n"
        "Sofia: About two weeks ago."
    )
    parsed = parse_dialogue(text, DOCTOR)
    assert parsed.ok and parsed.inferred and parsed.rated_speakers == ("Sofia",)
    assert parsed.rated_texts == ["They hurt, a lot.", "About two weeks ago."]


def test_bullets_and_one_off_labels_continue_the_turn_and_preamble_is_dropped() -> None:
    text = (
        "Here is the conversation:\n\n"
        "P: what should I change?\n"
        "D: A few things:\n"
        "- Diet: more fiber\n"
        "Amitriptyline: low dose at night\n"
        "P: ok thanks"
    )
    turns = parse_turns(text, DOCTOR)
    assert [t.speaker for t in turns] == ["P", "D", "P"]
    assert turns[1].text == "A few things:\n- Diet: more fiber\nAmitriptyline: low dose at night"


def test_other_named_speakers_are_not_rated_when_the_patient_is_tagged() -> None:
    text = "P: hey mom\nM: hi sweetie\nP: I feel sick\nM: let's see the doctor\nD: Hello."
    parsed = parse_dialogue(text, DOCTOR)
    assert parsed.rated_texts == ["hey mom", "I feel sick"]
    assert parsed.speakers == {"P": 2, "M": 2, "D": 1}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("D: Hello there.\nD: Any pain?\nD: Okay, see you.", "every turn is tagged"),
        ("Just some text\nwithout any speaker", "no speaker-tagged line"),
        ("Doctor: Hi.\nSofia: hi\nNurse Joy: hello\nSofia: ok\nNurse Joy: bye", "several"),
        ("D: Hi.\nP:\nD: Bye.", "says nothing"),
    ],
)
def test_unparseable_dialogues_say_why(text: str, reason: str) -> None:
    parsed = parse_dialogue(text, DOCTOR)
    assert not parsed.ok
    assert reason in parsed.error
    assert rated_turns(text, DOCTOR) == []


def test_turing_tags_do_not_guess_names() -> None:
    text = "I: who are you?\nW: sam\nI think: odd\nI: ok\nW: lol"
    # "I think:" is not the interrogator's tag: it continues the witness's turn
    assert rated_turns(text, SpeakerTags.turing()) == ["sam\nI think: odd", "lol"]
    assert not parse_dialogue("I: hello?\nI: anyone?", SpeakerTags.turing()).ok


def test_every_recorded_doctor_visit_has_a_rated_speaker(data_dir: Path) -> None:
    paths = glob.glob(str(data_dir / "aligned_outputs" / "*" / "*.csv"))
    paths.append(str(data_dir / "synthlabs" / "candidates_test.csv"))
    texts = pd.concat(pd.read_csv(p, usecols=["dialogue"]) for p in paths)["dialogue"].unique()
    results = [parse_dialogue(str(t), DOCTOR) for t in texts]
    assert len(results) > 2000
    assert [r.error for r in results if not r.ok] == []
    assert sum(r.inferred for r in results) >= 10  # Sofia:, G:, Alyssa Graham:, ...


def test_style_features_count_what_they_say() -> None:
    text = (
        "D: How are you?\n"
        "P: im sooo tired lol 😅\n"
        "D: Since when?\n"
        "P: like a week :) dunno why!!\n"
        "D: Anything else?\n"
        "P: My knee hurts when I walk downhill, and I'm worried it's getting worse."
    )
    vocabulary = frozenset({
        "im", "so", "tired", "like", "a", "week", "why", "my", "knee", "hurts", "when", "i",
        "walk", "and", "worried", "it",
    })  # fmt: skip
    values = dict(
        zip(STYLE_FEATURES, style_features(parse_dialogue(text, DOCTOR), vocabulary), strict=True)
    )
    assert "style.emb_coverage" not in values  # the encoder's budget is not a feature
    assert values["style.log_turns"] == pytest.approx(np.log1p(3))
    assert values["style.lowercase_start_rate"] == pytest.approx(2 / 3)
    assert values["style.emoji_per_turn"] == pytest.approx(1 / 3)
    assert values["style.emoticon_per_turn"] == pytest.approx(1 / 3)
    assert values["style.exclamation_per_turn"] == pytest.approx(2 / 3)
    assert values["style.elongation_rate"] > 0
    assert values["style.slang_rate"] > 0 and values["style.laugh_per_turn"] == pytest.approx(1 / 3)
    assert values["style.contraction_rate"] > 0
    assert 0 < values["style.oov_rate"] < 1  # sooo, lol, dunno, downhill, getting ...
    assert values["style.words_per_turn_cv"] > 0
    assert values["style.inferred_speaker"] == 0.0
    formal = parse_dialogue("D: Hi.\nP: Good morning, Doctor. I Am Well.", DOCTOR)
    assert (
        dict(zip(STYLE_FEATURES, style_features(formal, vocabulary), strict=True))[
            "style.lowercase_start_rate"
        ]
        == 0.0
    )


def test_windows_cover_every_word_piece() -> None:
    turns = ["abcdefghij", "klm"]
    offsets = [[(i, i + 1) for i in range(10)], [(0, 1), (1, 2), (2, 3)]]
    chunks = chunk_turns(turns, offsets, chunk_tokens=4)
    assert chunks == [("abcd", 4), ("efgh", 4), ("ij\nkl", 4), ("m", 1)]
    assert spaced_indices(10, 1) == [5] and spaced_indices(10, 3) == [0, 4, 9]
    assert spaced_indices(2, 5) == [0, 1]


def test_turn_heads_keep_each_turns_first_pieces() -> None:
    turns = ["abcdefghij", "klm", "  "]
    offsets = [[(i, i + 1) for i in range(10)], [(0, 1), (1, 2), (2, 3)], []]
    heads = turn_heads(turns, offsets, turn_tokens=4)
    assert heads == [(0, "abcd", 4, 10), (1, "klm", 3, 3)]  # a turn without pieces is skipped


@pytest.mark.slow
def test_featurizer_pools_every_turn_caps_encoder_work_and_is_deterministic(tmp_path) -> None:
    long_turn = " ".join(f"word{i} is here" for i in range(120))  # several hundred pieces
    many_turns = "\n".join(f"D: Question {i}?\nP: answer number {i}" for i in range(12))
    dialogues = [
        "D: Hi.\nP: short answer\nD: And?\nP: another short one",
        f"D: Tell me everything.\nP: {long_turn}",
        "D: Hello?\nD: Anyone?",
        many_turns,
    ]
    featurizer = DialogueFeaturizer(FeatureConfig(turn_pooling=("mean", "std")), cache=None)
    a = featurizer.transform(dialogues, DOCTOR)
    b = featurizer.transform(dialogues, DOCTOR)
    # the float32 encoder may move a component by up to ~2e-7 with threads or kernels (see
    # embed_exact); a lost turn or another pooling moves features by orders of magnitude more
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-6)
    assert a.errors[2] is not None and np.isnan(a.values[2]).all() and np.isnan(a.coverage[2])
    assert a.coverage[0] == 1.0 and 0 < a.coverage[1] < 0.1  # 16 of several hundred pieces
    assert a.coverage[3] < 1.0  # 4 of 12 turns encoded
    assert len(a.names) == a.values.shape[1] == 384 * 3 + len(STYLE_FEATURES)
    mean = a.values[[0, 1, 3], :384]
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-6)
    spread = a.values[:, 384:768]
    assert (spread[1] == 0).all() and (spread[0] > 0).any()  # one turn has no spread

    # the mean of the turns' own embeddings, each turn embedded alone
    from hal_core.embedding import embed_texts

    turns = embed_texts(["short answer", "another short one"]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(a.values[0, :384], turns / np.linalg.norm(turns), atol=1e-5)
    every = DialogueFeaturizer(FeatureConfig(max_turns=None), cache=None)
    assert every.transform(dialogues[3:], DOCTOR).coverage[0] == 1.0

    window = DialogueFeaturizer(FeatureConfig(embedding_unit="window"), cache=None)
    w = window.transform(dialogues, DOCTOR)
    assert w.names[0] == "emb.000" and 0 < w.coverage[1] < 0.3

    from hal_core.embedding import EmbeddingCache

    cached = DialogueFeaturizer(FeatureConfig(), cache=EmbeddingCache(tmp_path / "emb.sqlite"))
    first = cached.transform(dialogues, DOCTOR).values
    np.testing.assert_array_equal(first, cached.transform(dialogues, DOCTOR).values)
    np.testing.assert_allclose(first[[0, 1, 3], :384], a.values[[0, 1, 3], :384], atol=1e-6)
