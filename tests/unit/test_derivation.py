"""Trait derivation on small synthetic statement sets whose clusters are known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hal_core import derivation as dv
from hal_core import statements as st
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.settings import PROJECT_ROOT
from hal_core.tables import ROW_COLUMN

RECIPE = dv.DerivationRecipe()


def blobs(sizes: list[int], dim: int = 24, spread: float = 0.08, seed: int = 0):
    """Unit vectors around orthogonal centres; texts name their topic; labels are the truth."""
    rng = np.random.default_rng(seed)
    vectors, texts, labels = [], [], []
    for topic, size in enumerate(sizes):
        centre = np.eye(dim)[topic]
        for item in range(size):
            vectors.append(centre + spread * rng.normal(size=dim))
            texts.append(f"topic {topic} statement {item:02d}")
            labels.append(topic)
    return dv.unit_rows(np.array(vectors)), texts, np.array(labels)


def clustering_of(labels: np.ndarray, seed: int = 0) -> dv.Clustering:
    labels = dv.canonical_labels(labels)
    return dv.Clustering(seed=seed, labels=labels, layout=np.zeros((len(labels), 2)))


def statements_frame(cells: list[object]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            ROW_COLUMN: range(1, len(cells) + 1),
            "game_id": [f"g{i}" for i in range(1, len(cells) + 1)],
            dv.STATEMENTS_COLUMN: cells,
        }
    )
    frame.attrs["source"] = "turing/statements_test.csv"
    return frame


def test_malformed_statement_cells_are_named_by_file_row_and_rule() -> None:
    frame = statements_frame(
        [
            json.dumps(["Uses slang.", "Shares plans."]),
            "Uses slang, not JSON",
            "[]",
            json.dumps(["Uses slang.", 3]),
            json.dumps(["Uses slang.", "   "]),
            None,
        ]
    )
    problems = dv.statement_cell_problems(frame)
    assert [(p.row, p.rule) for p in problems] == [
        (2, st.RULE_NOT_LIST),
        (3, st.RULE_EMPTY),
        (4, st.RULE_NON_STRING),
        (5, st.RULE_BLANK),
        (6, st.RULE_MISSING),
    ]
    with pytest.raises(dv.StatementsError) as error:
        dv.collect_statements(frame)
    message = str(error.value)
    assert "turing/statements_test.csv" in message
    assert "row 2 (game_id=g2): not a JSON list" in message
    assert "row 4 (game_id=g4): non-string item: item 2 is int" in message

    valid, quarantined = dv.split_statement_rows(frame, problems)
    assert valid[ROW_COLUMN].tolist() == [1]
    assert quarantined[ROW_COLUMN].tolist() == [2, 3, 4, 5, 6]
    assert quarantined["_failed_rules"].iloc[1].startswith(st.RULE_EMPTY)
    statements = dv.collect_statements(valid)
    assert statements["statement_id"].tolist() == ["g1:1", "g1:2"]
    assert statements["text"].tolist() == ["Uses slang.", "Shares plans."]


def test_missing_statements_column_is_an_error_naming_the_rule() -> None:
    frame = statements_frame(["[]"]).drop(columns=[dv.STATEMENTS_COLUMN])
    with pytest.raises(dv.StatementsError, match="statements table columns"):
        dv.statement_cell_problems(frame)


def test_cluster_summary_keeps_the_k_statements_nearest_the_centroid() -> None:
    vectors, _, labels = blobs([12, 20])
    (small, large) = sorted(dv.summarize_clusters(vectors, labels, k=4), key=lambda s: s.size)
    assert (small.size, large.size) == (12, 20)
    members = np.array(large.members)
    centroid = vectors[members].mean(axis=0)
    similarity = vectors[members] @ (centroid / np.linalg.norm(centroid))
    expected = members[np.argsort(-similarity)[:4]]
    assert list(large.nearest) == expected.tolist()
    assert large.representative == expected[0]
    assert 0.9 < large.cohesion <= 1.0


def test_near_duplicate_clusters_merge_and_distinct_ones_stay() -> None:
    vectors, _, labels = blobs([15, 12, 10])
    # a fourth cluster that says the same as the first (its vectors lie at cosine ~0.97)
    twin = dv.unit_rows(vectors[labels == 0][:11] + 0.02)
    vectors = np.vstack([vectors, twin])
    labels = np.concatenate([labels, np.full(len(twin), 3)])
    summaries = dv.summarize_clusters(vectors, labels, k=3)
    merged = dv.merge_near_duplicates(summaries, vectors, threshold=0.9, k=3)
    assert sorted(m.size for m in merged) == [10, 12, 26]
    (pair,) = [m for m in merged if len(m.labels) == 2]
    assert sorted(pair.labels) == [0, 3]
    kept_apart = dv.merge_near_duplicates(summaries, vectors, threshold=0.999, k=3)
    assert sorted(m.size for m in kept_apart) == [10, 11, 12, 15]


def test_trait_ids_follow_cluster_size_then_text_whatever_the_input_order() -> None:
    vectors, texts, labels = blobs([11, 25, 14, 14])
    first = dv.consolidate(vectors, texts, clustering_of(labels), RECIPE).questionnaire
    assert first.trait_ids == ["t01", "t02", "t03", "t04"]
    sizes = [t.provenance["cluster_size"] for t in first.traits]
    assert sizes == [25, 14, 14, 11]
    assert first.traits[0].text.startswith("topic 1 ")
    assert first.traits[1].text < first.traits[2].text  # equal sizes: by text

    order = np.random.default_rng(1).permutation(len(texts))
    shuffled = dv.consolidate(
        vectors[order], [texts[i] for i in order], clustering_of(labels[order]), RECIPE
    ).questionnaire
    assert [(t.id, t.text) for t in shuffled.traits] == [(t.id, t.text) for t in first.traits]
    assert shuffled.version == first.version


def test_questionnaire_carries_provenance_and_round_trips() -> None:
    vectors, texts, labels = blobs([12, 10])
    labels = labels.copy()
    labels[[0, 1]] = dv.NOISE
    derivation = dv.consolidate(
        vectors, texts, clustering_of(labels), RECIPE, name="derived-test", derivation={"x": 1}
    )
    questionnaire = derivation.questionnaire
    provenance = questionnaire.traits[0].provenance
    assert provenance["cluster_size"] == 10
    assert len(provenance["examples"]) == RECIPE.consolidation.k_nearest
    assert provenance["representatives"] == [questionnaire.traits[0].text]
    assert questionnaire.derivation["x"] == 1
    # recorded with 4 decimals: half a unit of the 4th is the whole tolerance
    assert questionnaire.derivation["noise_fraction"] == pytest.approx(2 / 22, abs=5e-5)
    assert {len(m) for m in derivation.members.values()} == {10}
    assert Questionnaire.model_validate_json(questionnaire.to_json()).version == (
        questionnaire.version
    )
    owners = dv.statement_traits(len(texts), derivation.members)
    assert owners[:2] == ["", ""] and set(owners[2:]) == {"t01", "t02"}


def test_seeded_umap_hdbscan_recovers_known_clusters_identically() -> None:
    from sklearn.metrics import adjusted_rand_score

    vectors, texts, truth = blobs([30, 26, 22, 18], spread=0.12)
    neighbours = dv.exact_neighbours(vectors, RECIPE.umap.n_neighbors)
    first = dv.cluster_statements(vectors, RECIPE, seed=3, neighbours=neighbours)
    again = dv.cluster_statements(vectors, RECIPE, seed=3)
    assert first.n_clusters == 4
    assert adjusted_rand_score(truth, first.labels) > 0.95
    assert np.array_equal(first.labels, again.labels)
    assert np.array_equal(first.layout, again.layout)
    one = dv.consolidate(vectors, texts, first, RECIPE).questionnaire.to_json()
    two = dv.consolidate(vectors, texts, again, RECIPE).questionnaire.to_json()
    assert one == two


def test_exact_neighbours_put_each_point_first_and_break_ties_by_index() -> None:
    vectors, _, _ = blobs([20])
    vectors = np.vstack([vectors, vectors[:3]])  # exact duplicates of points 0, 1, 2
    indices, distances = dv.exact_neighbours(vectors, 5, block=7)
    assert indices[:, 0].tolist() == list(range(len(vectors)))
    assert indices[0, 1] == 20 and indices[20, 1] == 0
    assert distances[0, 1] == pytest.approx(0.0, abs=1e-12)  # 1 - v.v of a unit row, rounded
    assert np.all(np.diff(distances, axis=1) >= 0)
    again, _ = dv.exact_neighbours(vectors, 5, block=1024)
    assert np.array_equal(indices, again)


class FakeCompleter:
    """Stands in for an LLM: records the prompt and answers with a fixed reply."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    def complete(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.reply


def test_llm_consolidator_rewrites_groups_and_records_what_it_dropped() -> None:
    vectors, texts, labels = blobs([20, 16, 12, 10])
    reply = {
        "traits": [
            {
                "text": "Talks about everyday topics.",
                "group": "Content",
                "clusters": ["c01", "c03"],
            },
            {"text": "Keeps replies short.", "group": "Style", "clusters": ["c02"]},
        ],
        "dropped": [],
    }
    completer = FakeCompleter("```json\n" + json.dumps(reply) + "\n```")
    assert isinstance(completer, dv.TextCompleter)
    derivation = dv.consolidate(
        vectors, texts, clustering_of(labels), RECIPE, consolidator="llm", completer=completer
    )
    (prompt,) = completer.prompts
    assert "[c01] size 20" in prompt and "representative: topic 0" in prompt
    questionnaire = derivation.questionnaire
    assert [(t.id, t.text, t.group) for t in questionnaire.traits] == [
        ("t01", "Talks about everyday topics.", "Content"),
        ("t02", "Keeps replies short.", "Style"),
    ]
    assert questionnaire.traits[0].provenance["cluster_size"] == 32
    assert derivation.dropped == {"c04": "not mentioned by the consolidator"}
    assert questionnaire.derivation["dropped_clusters"] == derivation.dropped
    assert len(derivation.members["t01"]) == 32


@pytest.mark.parametrize(
    ("reply", "rule"),
    [
        ("no json here", "reply is a JSON object"),
        ('{"traits": [{"text": "x", "clusters": ["c09"]}]}', "known cluster key"),
        (
            '{"traits": [{"text": "x", "clusters": ["c01"]}, {"text": "y", "clusters": ["c01"]}]}',
            "each cluster used once",
        ),
        ('{"traits": [{"text": " ", "clusters": ["c01"]}]}', "text is not empty"),
    ],
)
def test_llm_replies_that_break_a_rule_are_rejected(reply: str, rule: str) -> None:
    vectors, texts, labels = blobs([12, 10])
    with pytest.raises(dv.ConsolidationError, match=rule):
        dv.consolidate(vectors, texts, clustering_of(labels), RECIPE, "llm", FakeCompleter(reply))


def test_coverage_counts_reference_traits_at_each_threshold() -> None:
    def trait_set(name: str, n: int) -> Questionnaire:
        return Questionnaire(
            name=name,
            traits=tuple(Trait(id=f"t{i:02d}", text=f"{name} {i}") for i in range(1, n + 1)),
        )

    derived = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    angle = np.arccos(0.65)
    reference = np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(angle), np.sin(angle)], [0.0, 0.5, np.sqrt(0.75)]]
    )
    table = dv.coverage_table(trait_set("ref", 3), reference, trait_set("derived", 2), derived)
    assert table["derived_id"].tolist() == ["t01", "t02", "t02"]
    # written with 4 decimals; the matrix product's last bits sit far below half a unit
    assert table["cosine"].tolist() == pytest.approx([1.0, 0.65, 0.5], abs=5e-5)
    assert dv.coverage_counts(table, [0.70, 0.60]) == {
        "coverage.n_at_0.70": 1,
        "coverage.n_at_0.60": 2,
    }


def test_stability_is_full_for_identical_runs_and_low_for_scrambled_ones() -> None:
    vectors, texts, labels = blobs([15, 12, 10])
    runs = [clustering_of(labels, seed) for seed in (0, 1, 2)]
    members = dv.consolidate(vectors, texts, runs[0], RECIPE).members
    report = dv.assess_stability(runs, members, vectors, RECIPE)
    assert report.ari_mean == pytest.approx(1.0, abs=1e-12) and report.n_stable_traits == 3
    assert len(report.pairwise_ari) == 3

    scrambled = clustering_of(np.random.default_rng(0).permutation(labels), seed=9)
    report = dv.assess_stability([runs[0], scrambled], members, vectors, RECIPE)
    assert report.ari_mean < 0.2
    assert report.n_stable_traits == 0
    survival = list(report.to_dict()["survival"].values())
    assert survival and survival == pytest.approx([0.5] * len(survival), abs=1e-12)  # 1 of 2


def test_medoid_run_is_the_one_agreeing_most_with_the_others() -> None:
    _, _, labels = blobs([15, 12, 10])
    odd = labels.copy()
    odd[:8] = 2
    runs = [clustering_of(odd, 0), clustering_of(labels, 1), clustering_of(labels, 2)]
    assert dv.select_main_run(runs, "medoid").seed == 1
    assert dv.select_main_run(runs, "first").seed == 0


def test_shipped_recipe_loads_and_unknown_keys_are_rejected(tmp_path) -> None:
    shipped = dv.DerivationRecipe.load(PROJECT_ROOT / "infra/recipes/derive_traits.yaml")
    assert shipped == dv.DerivationRecipe()
    assert (shipped.umap.n_neighbors, shipped.umap.n_components, shipped.umap.metric) == (
        15,
        5,
        "cosine",
    )
    assert shipped.hdbscan.min_cluster_size == 10 and len(shipped.seeds) == 5
    for field in dv.DerivationRecipe.model_fields.values():
        assert field.description
    bad = tmp_path / "bad.yaml"
    bad.write_text("umap:\n  n_neighbours: 15\n")
    with pytest.raises(ValueError, match="not a derivation recipe"):
        dv.DerivationRecipe.load(bad)
    with pytest.raises(ValueError, match="seeds repeat"):
        dv.DerivationRecipe(seeds=[1, 1])


def test_canonical_order_makes_the_order_of_table_rows_irrelevant() -> None:
    cells = [
        json.dumps(["Uses slang.", "Shares plans."]),
        json.dumps(["Asks back.", "Uses slang."]),
        json.dumps(["Makes typos."]),
    ]
    forward = dv.canonical_order(dv.collect_statements(statements_frame(cells)))
    reversed_table = statements_frame(cells).iloc[::-1].reset_index(drop=True)
    reversed_table.attrs["source"] = "turing/statements_test.csv"
    backward = dv.canonical_order(dv.collect_statements(reversed_table))
    assert forward["text"].tolist() == [
        "Asks back.",
        "Makes typos.",
        "Shares plans.",
        "Uses slang.",
        "Uses slang.",
    ]
    assert forward["statement_id"].tolist() == ["g2:1", "g3:1", "g1:2", "g1:1", "g2:2"]
    pd.testing.assert_frame_equal(forward, backward)
    assert forward.attrs["source"] == "turing/statements_test.csv"


def test_single_threaded_holds_blas_openmp_and_numba_to_one_thread_then_restores() -> None:
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2):
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        before_numba = numba.get_num_threads()
        before_pools = [pool["num_threads"] for pool in threadpool_info()]
        with dv.single_threaded():
            assert numba.get_num_threads() == 1
            assert {pool["num_threads"] for pool in threadpool_info()} == {1}
        assert numba.get_num_threads() == before_numba
        assert [pool["num_threads"] for pool in threadpool_info()] == before_pools


def test_coverage_by_seed_measures_each_runs_own_questionnaire() -> None:
    vectors, texts, labels = blobs([15, 12, 10])
    runs = [clustering_of(labels, seed=0), clustering_of(np.where(labels == 2, 1, labels), 1)]
    reference = Questionnaire(
        name="ref", traits=tuple(Trait(id=f"t{i:02d}", text=f"ref {i}") for i in (1, 2, 3))
    )
    centres = np.vstack([vectors[labels == topic].mean(axis=0) for topic in range(3)])
    recipe = dv.DerivationRecipe(coverage_thresholds=[0.9, 0.5])
    table = dv.coverage_by_seed(runs, vectors, texts, recipe, reference, centres)
    assert table["seed"].tolist() == [0, 1]
    assert table["n_traits"].tolist() == [3, 2]
    assert table["coverage.n_at_0.90"].tolist() == [3, 2]  # topics 1 and 2 share a trait
    assert (table["coverage.n_at_0.50"] >= table["coverage.n_at_0.90"]).all()
