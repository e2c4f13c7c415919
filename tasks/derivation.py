"""Tasks of the trait-derivation stage: statements in, a questionnaire and its evidence out."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from hal_core import derivation as core
from hal_core import markdown
from hal_core.embedding import EXACT_MODEL_KEY, EmbeddingCache, embed_exact
from hal_core.judges import JudgeConfig, build_judge
from hal_core.judging import JudgeConfigurationError
from hal_core.questionnaire import Questionnaire
from hal_core.settings import PROJECT_ROOT, HalSettings
from hal_core.tables import read_table, table_text
from tasks import tracking
from tasks.rating import resolve_api_key
from tasks.retries import retry_unless_bad_input

COVERAGE_ARTIFACT_KEY = "derive-traits-coverage"


def embedding_cache_path(settings: HalSettings) -> Path:
    """Where sentence embeddings are cached (by content hash) under HAL_HOME."""
    return settings.home_dir / "cache" / "embeddings.sqlite"


def resolve_recipe_path(recipe_file: str | Path) -> Path:
    """A recipe path as given when absolute or present, else relative to the project root."""
    path = Path(recipe_file)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def resolve_completer(spec: str) -> core.TextCompleter:
    """``package.module:name``: an object with ``complete(prompt) -> str``, or a class or
    zero-argument factory returning one (e.g. a wrapper around a chat-completions endpoint)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"completer {spec!r}: expected 'package.module:name'")
    target = getattr(importlib.import_module(module_name), attribute)
    is_instance = not isinstance(target, type) and callable(getattr(target, "complete", None))
    completer = target if is_instance else target()
    if not callable(getattr(completer, "complete", None)):
        raise TypeError(f"completer {spec!r} gives {completer!r}, which has no complete(prompt)")
    return completer


def judge_completer(config: JudgeConfig, settings: HalSettings) -> core.TextCompleter:
    """A judge's model as the consolidator's text model (key from env or a Secret block)."""
    judge = build_judge(config, api_key=resolve_api_key(config), data_dir=settings.data_dir)
    if not callable(getattr(judge, "complete", None)):
        raise JudgeConfigurationError(
            f"backend {config.backend!r} cannot write free text for the llm consolidator; "
            "use the openai backend (any OpenAI-compatible endpoint) or a completer"
        )
    return judge


@dataclass(frozen=True)
class StatementSet:
    """Statements one per row, and the table rows quarantined for malformed cells."""

    statements: pd.DataFrame
    quarantined: pd.DataFrame

    @property
    def texts(self) -> list[str]:
        return self.statements["text"].tolist()


class LayoutStore:
    """UMAP layouts saved as ``.npy`` under HAL_HOME, named by :func:`core.layout_key`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, key: str) -> np.ndarray | None:
        path = self.folder / f"{key}.npy"
        return np.load(path) if path.is_file() else None

    def put(self, key: str, layout: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        scratch = self.folder / f"{key}.tmp.npy"
        np.save(scratch, layout)
        scratch.replace(self.folder / f"{key}.npy")  # atomic: readers never see half a file


def layout_store(settings: HalSettings, enabled: bool) -> LayoutStore | None:
    return LayoutStore(settings.home_dir / "cache" / "umap") if enabled else None


@dataclass
class ClusteringRuns:
    """All seeded runs over one exact k-NN graph (computed only when a layout is)."""

    runs: list[core.Clustering]
    embeddings: np.ndarray
    recipe: core.DerivationRecipe
    store: LayoutStore | None
    _neighbours: tuple[np.ndarray, np.ndarray] | None = None

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        if self._neighbours is None:
            umap = self.recipe.umap
            self._neighbours = core.exact_neighbours(self.embeddings, umap.n_neighbors, umap.metric)
        return self._neighbours

    def layout(self, seed: int, n_components: int | None = None, min_dist: float | None = None):
        """A seed's UMAP layout, from the store when it holds it, else computed (and stored)."""
        key = core.layout_key(self.embeddings, self.recipe.umap, seed, n_components, min_dist)
        found = self.store.get(key) if self.store is not None else None
        if found is not None:
            return found
        layout = core.project(
            self.embeddings, self.neighbours(), self.recipe.umap, seed, n_components, min_dist
        )
        if self.store is not None:
            self.store.put(key, layout)
        return layout


@task(
    name="load_statements",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def load_statements(path: Path) -> pd.DataFrame:
    """Read a statements table with row numbers for error messages."""
    return read_table(path)


@task(name="extract_statements", cache_policy=NO_CACHE)
def extract_statements(frame: pd.DataFrame, policy: str) -> StatementSet:
    """One row per statement, in canonical order; malformed cells stop the run (fail) or are
    set aside."""
    problems = core.statement_cell_problems(frame)
    if policy == "fail" or not problems:
        return StatementSet(core.canonical_order(core.collect_statements(frame)), frame.iloc[0:0])
    valid, quarantined = core.split_statement_rows(frame, problems)
    return StatementSet(core.canonical_order(core.collect_statements(valid)), quarantined)


def embedding_cache(settings: HalSettings) -> EmbeddingCache:
    """The derivation's embedding cache (machine-independent vectors) under HAL_HOME."""
    return EmbeddingCache(embedding_cache_path(settings), model_name=EXACT_MODEL_KEY)


@task(name="embed_statements", cache_policy=NO_CACHE)
def embed_statements(texts: Sequence[str], settings: HalSettings) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings, the same on any machine; cached texts are not re-encoded."""
    return embed_exact(list(texts), embedding_cache(settings))


@task(name="cluster_statements", cache_policy=NO_CACHE)
def cluster_statements(
    embeddings: np.ndarray, recipe: core.DerivationRecipe, store: LayoutStore | None
) -> ClusteringRuns:
    """One UMAP + HDBSCAN run per recipe seed; stored layouts are reused, not recomputed."""
    clustering = ClusteringRuns(runs=[], embeddings=embeddings, recipe=recipe, store=store)
    for seed in recipe.seeds:
        layout = clustering.layout(seed)
        clustering.runs.append(core.cluster_statements(embeddings, recipe, seed, layout=layout))
    return clustering


@task(name="consolidate_traits", cache_policy=NO_CACHE)
def consolidate_traits(
    embeddings: np.ndarray,
    texts: Sequence[str],
    clustering: ClusteringRuns,
    recipe: core.DerivationRecipe,
    consolidator: core.Consolidator,
    completer: core.TextCompleter | None,
    name: str,
    derivation: dict,
) -> core.Derivation:
    """Pick the main run, summarize and merge its clusters, and write the questionnaire."""
    main = core.select_main_run(clustering.runs, recipe.main_run)
    return core.consolidate(
        embeddings, texts, main, recipe, consolidator, completer, name, derivation
    )


@task(name="assess_stability", cache_policy=NO_CACHE)
def assess_stability(
    clustering: ClusteringRuns,
    derivation: core.Derivation,
    embeddings: np.ndarray,
    recipe: core.DerivationRecipe,
) -> core.StabilityReport:
    """Adjusted Rand index between the seeded runs and how many traits every run finds."""
    return core.assess_stability(clustering.runs, derivation.members, embeddings, recipe)


@task(name="map_statements", cache_policy=NO_CACHE)
def map_statements(clustering: ClusteringRuns, seed: int) -> np.ndarray:
    """A 2-D UMAP layout of the statements for the map plot."""
    return clustering.layout(seed, n_components=2, min_dist=clustering.recipe.map.min_dist)


@task(name="measure_coverage", cache_policy=NO_CACHE)
def measure_coverage(
    reference: Questionnaire,
    reference_vectors: np.ndarray,
    derived: Questionnaire,
    derived_vectors: np.ndarray,
) -> pd.DataFrame:
    """Best-matching derived trait (and cosine) for every reference trait."""
    return core.coverage_table(reference, reference_vectors, derived, derived_vectors)


@task(name="measure_seed_coverage", cache_policy=NO_CACHE)
def measure_seed_coverage(
    clustering: ClusteringRuns,
    texts: Sequence[str],
    reference: Questionnaire,
    reference_vectors: np.ndarray,
) -> pd.DataFrame:
    """Coverage of every seeded run's own extractive questionnaire (how much a seed moves it)."""
    return core.coverage_by_seed(
        clustering.runs,
        clustering.embeddings,
        texts,
        clustering.recipe,
        reference,
        reference_vectors,
    )


@task(name="save_questionnaire", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def save_questionnaire(questionnaire: Questionnaire, settings: HalSettings) -> Path:
    """Write the derived questionnaire under HAL_HOME/traits, named by its version."""
    path = settings.home_dir / "traits" / f"{questionnaire.name}-{questionnaire.version}.json"
    return questionnaire.save(path)


def _map_figure(layout: np.ndarray, owners: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 9))
    owners_array = np.asarray(owners)
    unclustered = owners_array == ""
    axis.scatter(*layout[unclustered].T, s=3, c="lightgray", label="unclustered")
    trait_ids = sorted(set(owners) - {""})
    colours = plt.get_cmap("tab20")
    for number, trait_id in enumerate(trait_ids):
        points = layout[owners_array == trait_id]
        axis.scatter(*points.T, s=4, color=colours(number % 20))
        axis.annotate(trait_id, np.median(points, axis=0), fontsize=7, ha="center", weight="bold")
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(loc="lower right", markerscale=4)
    return figure


@dataclass(frozen=True)
class DerivationEvidence:
    """Everything the log task records for one derivation run."""

    statements_file: str
    statements: StatementSet
    quarantined_rows: int
    derivation: core.Derivation
    stability: core.StabilityReport
    layout: np.ndarray
    coverage: pd.DataFrame | None
    cluster_coverage: pd.DataFrame | None
    questionnaire_path: Path
    seed_coverage: pd.DataFrame | None = None


def derivation_metrics(
    evidence: DerivationEvidence, recipe: core.DerivationRecipe
) -> dict[str, float]:
    """The stage's metrics under their stable names."""
    main = evidence.derivation.main
    statements = evidence.statements.statements
    metrics: dict[str, float] = {
        "n_statements": len(statements),
        "n_games": statements["game_id"].nunique(),
        "n_clusters": main.n_clusters,
        "n_traits": len(evidence.derivation.questionnaire.traits),
        "noise_fraction": main.noise_fraction,
        "main_seed": main.seed,
        "quarantined_rows": evidence.quarantined_rows,
        "stability.ari_mean": evidence.stability.ari_mean,
        "stability.ari_min": evidence.stability.ari_min,
        "stability.n_stable_traits": evidence.stability.n_stable_traits,
    }
    if evidence.coverage is not None:
        metrics |= core.coverage_counts(evidence.coverage, recipe.coverage_thresholds)
        metrics["coverage.mean_cosine"] = float(evidence.coverage["cosine"].mean())
    if evidence.cluster_coverage is not None:
        counts = core.coverage_counts(evidence.cluster_coverage, recipe.coverage_thresholds)
        metrics |= {
            name.replace("coverage.", "coverage_clusters."): n for name, n in counts.items()
        }
    if evidence.seed_coverage is not None:
        for threshold in recipe.coverage_thresholds:
            column = evidence.seed_coverage[core.coverage_metric(threshold)]
            name = core.coverage_metric(threshold).replace("coverage.", "coverage_seeds.")
            metrics |= {
                f"{name}.min": float(column.min()),
                f"{name}.mean": float(column.mean()),
                f"{name}.max": float(column.max()),
            }
    return metrics


@task(name="log_derivation", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_derivation(
    run_id: str,
    evidence: DerivationEvidence,
    recipe: core.DerivationRecipe,
    params: dict[str, object],
) -> dict[str, float]:
    """Log params, metrics, the questionnaire, coverage, stability, map and cluster listing."""
    derivation = evidence.derivation
    questionnaire = derivation.questionnaire
    tracking.log_params(
        run_id,
        {
            **params,
            **{f"recipe.{key}": value for key, value in recipe.flat_params().items()},
            "recipe.digest": recipe.digest,
            "questionnaire.version": questionnaire.version,
        },
    )
    metrics = derivation_metrics(evidence, recipe)
    tracking.log_metrics(run_id, metrics)
    client = MlflowClient()
    client.log_text(run_id, questionnaire.to_json(), "questionnaire.json")
    if evidence.coverage is not None:
        client.log_text(run_id, table_text(evidence.coverage), "coverage/coverage.csv")
        summary = ", ".join(f"{k} = {int(v)}" for k, v in metrics.items() if "n_at_" in k)
        client.log_text(
            run_id,
            f"# Coverage of the reference questionnaire\n\n{summary}\n\n"
            + markdown.frame_table(evidence.coverage),
            "coverage/coverage.md",
        )
    if evidence.cluster_coverage is not None:
        client.log_text(
            run_id,
            table_text(evidence.cluster_coverage),
            "coverage/coverage_cluster_centroids.csv",
        )
    if evidence.seed_coverage is not None:
        client.log_text(run_id, table_text(evidence.seed_coverage), "coverage/coverage_by_seed.csv")
    tracking.log_json(run_id, evidence.stability.to_dict(), "stability.json")
    texts = evidence.statements.texts
    noise = int(np.sum(derivation.main.labels == core.NOISE))
    client.log_text(
        run_id,
        core.cluster_listing(questionnaire, len(texts), noise, derivation.dropped),
        "clusters.md",
    )
    owners = core.statement_traits(len(texts), derivation.members)
    table = evidence.statements.statements.assign(cluster=derivation.main.labels, trait_id=owners)
    client.log_text(run_id, table_text(table), "statements_clusters.csv")
    if len(evidence.statements.quarantined):
        client.log_text(
            run_id,
            table_text(evidence.statements.quarantined),
            "quarantine/statements_quarantined.csv",
        )
    if derivation.llm_prompt is not None:
        client.log_text(run_id, derivation.llm_prompt, "llm/prompt.txt")
        client.log_text(run_id, derivation.llm_reply or "", "llm/reply.txt")
    title = (
        f"{evidence.statements_file}: {len(texts)} statements, "
        f"{len(questionnaire.traits)} traits (seed {derivation.main.seed})"
    )
    tracking.log_figure(run_id, _map_figure(evidence.layout, owners, title), "statements_map.png")
    return metrics


@task(name="publish_coverage", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_coverage(coverage: pd.DataFrame, metrics: dict[str, float], run_id: str) -> None:
    """Show the coverage table in the Prefect UI (Artifacts tab)."""
    counts = ", ".join(f"{k} = {int(v)}" for k, v in metrics.items() if "n_at_" in k)
    create_table_artifact(
        table=coverage.astype(object).to_dict(orient="records"),
        key=COVERAGE_ARTIFACT_KEY,
        description=f"Reference traits matched by derived traits ({counts}); MLflow run {run_id}.",
    )
