import json

import pytest

from hal_core.questionnaire import Questionnaire, Trait


def _questionnaire(order: list[int]) -> Questionnaire:
    traits = [Trait(id=f"t{i:02d}", text=f"statement {i}", group="g") for i in (1, 2, 3)]
    return Questionnaire(name="q", traits=tuple(traits[i] for i in order))


def test_version_ignores_trait_order_but_not_text():
    assert _questionnaire([0, 1, 2]).version == _questionnaire([2, 0, 1]).version
    changed = Questionnaire(name="q", traits=(Trait(id="t01", text="other"),))
    assert changed.version != _questionnaire([0]).version


def test_duplicate_trait_ids_are_rejected():
    with pytest.raises(ValueError, match="repeats trait ids"):
        Questionnaire(name="q", traits=(Trait(id="t01", text="a"), Trait(id="t01", text="b")))


def test_malformed_trait_id_is_rejected():
    with pytest.raises(ValueError, match="does not match"):
        Trait(id="trait-1", text="a")


def test_save_and_load_round_trip(tmp_path):
    questionnaire = _questionnaire([1, 0, 2])
    path = questionnaire.save(tmp_path / "q.json")
    assert json.loads(path.read_text())["version"] == questionnaire.version
    assert Questionnaire.load(path) == questionnaire


def test_loading_a_broken_file_names_it(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        Questionnaire.load(path)


def test_hal32q_loads_with_ids_t01_to_t32(data_dir):
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    assert questionnaire.trait_ids == [f"t{i:02d}" for i in range(1, 33)]
    assert questionnaire.subset(["t05", "t01"]).trait_ids == ["t05", "t01"]
