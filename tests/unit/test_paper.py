"""The paper's constants: the published HAL16Q statements map to HAL32Q ids by text."""

from __future__ import annotations

import json

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from hal_core.paper import (
    HAL16Q_PUBLISHED_TRAIT_IDS,
    PAPER_WEIGHT_TRAIT_IDS,
    load_hal16q_published,
    load_paper_weights,
)
from hal_core.questionnaire import Questionnaire


def test_published_statements_are_the_hal32q_traits_their_ids_say(data_dir):
    published = load_hal16q_published(data_dir / "questionnaires/hal16q_published.json")
    hal32q = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    texts = [t.text for t in published.traits] + [t.text for t in hal32q.traits]
    matrix = TfidfVectorizer(ngram_range=(1, 2)).fit_transform(texts)
    similarity = cosine_similarity(matrix[:16], matrix[16:])
    nearest = [hal32q.trait_ids[row.argmax()] for row in similarity]
    assert nearest == list(HAL16Q_PUBLISHED_TRAIT_IDS)
    assert published.trait_ids == list(HAL16Q_PUBLISHED_TRAIT_IDS)


def test_three_readings_of_the_published_weights(data_dir):
    paper = load_paper_weights(data_dir / "hal16_weights_paper.json")
    fitted = paper.weights("fitted")
    compatible = paper.weights("paper_compatible")
    shared = paper.weights("shared")
    assert list(fitted) == list(PAPER_WEIGHT_TRAIT_IDS)
    assert list(compatible) == list(HAL16Q_PUBLISHED_TRAIT_IDS)
    # only positions 1 and 7 pair a statement with its own weight
    same = [t for t in compatible if fitted.get(t) == compatible[t]]
    assert same == ["t01", "t07"]
    assert sorted(shared) == sorted(set(PAPER_WEIGHT_TRAIT_IDS) & set(HAL16Q_PUBLISHED_TRAIT_IDS))
    assert len(shared) == 9
    assert all(shared[t] == fitted[t] for t in shared)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"w": [1.0] * 15, "b": 0.0}, "list of 16"),
        ({"w": [1.0] * 15 + [float("nan")], "b": 0.0}, r"w\[15\]"),
        ({"w": [1.0] * 16, "b": float("inf")}, "'b' = inf|b = inf"),
        ({"w": [1.0] * 15 + ["x"], "b": 0.0}, "not a number"),
        ({"weights": {}}, "published layout"),
    ],
)
def test_bad_weights_files_name_the_file_and_key(tmp_path, payload, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=message) as error:
        load_paper_weights(path)
    assert str(path) in str(error.value)
