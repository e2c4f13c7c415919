"""Trait derivation: judges' statements -> clusters -> a questionnaire with stable trait ids.

The paper's "what makes human conversation human" stage as pure functions:

1. :func:`collect_statements` turns a statements table (``human_characteristics``: a JSON list
   of short statements per game) into one row per statement; :func:`statement_cell_problems`
   names every malformed cell by row and rule.
   :func:`canonical_order` sorts them (text, game, position) whatever the table's order.
2. :func:`hal_core.embedding.embed_exact` embeds them so that a vector is the same on every
   machine (float64 encoder, rounded to 1e-6; float32 kernels differ between CPUs).
3. :func:`cluster_statements` projects the embeddings with UMAP (on an exact cosine k-NN
   graph computed once, see :func:`exact_neighbours`) and clusters the projection with
   HDBSCAN, seeded and :func:`single_threaded` so that a seed gives the same labels every
   time. The recipe runs several seeds; :func:`select_main_run` picks the medoid run;
   :func:`derive_questionnaire` does all of it in one call.
4. :func:`summarize_clusters` gives each cluster its size, the k statements nearest its
   centroid and a representative (the nearest one); :func:`merge_near_duplicates` merges
   clusters whose representatives are near-duplicates.
5. A consolidator turns kept clusters into trait drafts: :func:`extractive_drafts` (offline:
   the representative statement) or :func:`llm_drafts` (a text model rewrites and groups the
   representatives; any object with ``complete(prompt: str) -> str`` will do).
6. :func:`number_drafts` is the id rule: traits ordered by the number of statements behind
   them (descending), then text (code-point order), then lowest clustering label, and
   numbered ``t01``, ``t02``... The same statements, recipe and seeds give a byte-identical
   questionnaire JSON (:func:`consolidate`).
7. :func:`coverage_table` matches every reference trait to its best derived trait by cosine;
   :func:`assess_stability` compares the seeded clusterings (adjusted Rand index) and counts
   the derived traits found again in every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal_core.embedding import EmbeddingCache, embed_exact
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.statements import statement_cell_problem
from hal_core.tables import ROW_COLUMN, parse_list_cell

STATEMENTS_COLUMN = "human_characteristics"
"""Column of a statements table holding a JSON list of statements about the human witness."""

NOISE = -1
"""HDBSCAN's label for statements that belong to no cluster."""


_FROZEN = ConfigDict(extra="forbid", frozen=True)

DISTANCE_DECIMALS = 7
"""k-NN distances are rounded to this many decimals: their last float64 digits vary with the
BLAS kernels and matrix blocking, and UMAP's spectral initialisation, shared by every seed,
would otherwise change with them. (Embeddings sit on a 1e-6 grid, see ``embed_exact``.)"""

SIMILARITY_DECIMALS = 12
"""Cosines that order statements or decide a merge are rounded to this many decimals, far
above their float64 noise (~1e-16, which varies with BLAS kernels and threads)."""


# --------------------------------------------------------------------------------------------
# Recipe


class UmapConfig(BaseModel):
    """UMAP projection of the sentence embeddings before density clustering."""

    model_config = _FROZEN

    n_neighbors: int = Field(default=15, ge=2, description="Size of the k-NN graph UMAP builds.")
    n_components: int = Field(default=5, ge=2, description="Dimensions of the projection.")
    metric: Literal["cosine", "euclidean"] = Field(
        default="cosine", description="Distance between embeddings for the k-NN graph."
    )
    min_dist: float = Field(
        default=0.0,
        ge=0.0,
        description="How tightly UMAP packs points; 0.0 suits clustering (BERTopic default).",
    )
    n_epochs: int = Field(
        default=200,
        ge=10,
        description="Layout optimisation epochs (UMAP uses 500 below 10,000 points; 200 gives "
        "the same coverage here at 40 % of the time).",
    )


class HdbscanConfig(BaseModel):
    """HDBSCAN density clustering of the UMAP projection."""

    model_config = _FROZEN

    min_cluster_size: int = Field(default=10, ge=2, description="Smallest cluster kept.")
    min_samples: int | None = Field(
        default=None, ge=1, description="Core-distance neighbours; None = min_cluster_size."
    )
    cluster_selection_method: Literal["eom", "leaf"] = Field(
        default="eom", description="eom: most persistent clusters; leaf: finest clusters."
    )


class ConsolidationConfig(BaseModel):
    """From clusters to traits: examples kept per cluster and near-duplicate merging."""

    model_config = _FROZEN

    k_nearest: int = Field(
        default=5, ge=1, description="Statements nearest the centroid kept per cluster."
    )
    merge_threshold: float = Field(
        default=0.90,
        gt=0.0,
        le=1.0,
        description="Clusters whose representatives have cosine >= this are merged.",
    )
    llm_examples: int = Field(
        default=5, ge=1, description="Example statements per cluster shown to the llm consolidator."
    )


class StabilityConfig(BaseModel):
    """How a derived trait counts as found again in another seeded run."""

    model_config = _FROZEN

    survival_jaccard: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="A trait survives in a run when some trait of that run shares at least "
        "this Jaccard overlap of statements with it.",
    )


class MapConfig(BaseModel):
    """The 2-D picture of the statements (a separate UMAP with two components)."""

    model_config = _FROZEN

    min_dist: float = Field(default=0.1, ge=0.0, description="Spread of the 2-D layout.")


class DerivationRecipe(BaseModel):
    """Every parameter of trait derivation; loaded from ``infra/recipes/derive_traits.yaml``."""

    model_config = _FROZEN

    name: str = Field(default="derive_traits", description="Recipe name, logged with the run.")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        min_length=2,
        description="Seeds of the clustering runs; stability is measured across them and the "
        "questionnaire comes from one of them (see main_run).",
    )
    main_run: Literal["medoid", "first"] = Field(
        default="medoid",
        description="Run the questionnaire comes from: medoid = the run with the highest mean "
        "adjusted Rand index to the others (the most typical one); first = seeds[0].",
    )
    umap: UmapConfig = Field(default_factory=UmapConfig, description="UMAP projection.")
    hdbscan: HdbscanConfig = Field(default_factory=HdbscanConfig, description="Clustering.")
    consolidation: ConsolidationConfig = Field(
        default_factory=ConsolidationConfig, description="Cluster summaries and merging."
    )
    stability: StabilityConfig = Field(
        default_factory=StabilityConfig, description="Trait survival across the seeded runs."
    )
    coverage_thresholds: list[float] = Field(
        default_factory=lambda: [0.70, 0.60],
        min_length=1,
        description="Cosine levels at which reference traits count as covered.",
    )
    map: MapConfig = Field(default_factory=MapConfig, description="2-D statement map.")

    @model_validator(mode="after")
    def _check(self) -> DerivationRecipe:
        if any(not 0 < t <= 1 for t in self.coverage_thresholds):
            raise ValueError(f"coverage thresholds must lie in (0, 1]: {self.coverage_thresholds}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        return self

    @property
    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def flat_params(self) -> dict[str, object]:
        """``section.field`` -> value, for logging as run parameters."""
        flat: dict[str, object] = {}
        for key, value in self.model_dump(mode="json").items():
            if isinstance(value, dict):
                flat.update({f"{key}.{inner}": item for inner, item in value.items()})
            else:
                flat[key] = value
        return flat

    @classmethod
    def load(cls, path: str | Path) -> DerivationRecipe:
        path = Path(path)
        try:
            payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from error
        try:
            return cls.model_validate(payload)
        except ValueError as error:
            raise ValueError(f"{path}: not a derivation recipe: {error}") from error


# --------------------------------------------------------------------------------------------
# Statements


class StatementsError(ValueError):
    """A statements table breaks a rule; the message names the file, rows and rules."""


@dataclass(frozen=True)
class StatementProblem:
    """One malformed statements cell: where it is and which rule it breaks."""

    row: int
    game_id: str | None
    rule: str
    detail: str

    def describe(self, source: str) -> str:
        return f"{source} row {self.row} (game_id={self.game_id}): {self.rule}: {self.detail}"


def _require_columns(frame: pd.DataFrame, column: str) -> str:
    source = str(frame.attrs.get("source", "<table>"))
    missing = [name for name in (ROW_COLUMN, "game_id", column) if name not in frame]
    if missing:
        raise StatementsError(f"{source}: rule 'statements table columns': missing {missing}")
    return source


def statement_cell_problems(
    frame: pd.DataFrame, column: str = STATEMENTS_COLUMN
) -> list[StatementProblem]:
    """Every row whose statements cell is missing, not a list, empty or holds non-strings."""
    _require_columns(frame, column)
    problems = []
    for row, game_id, cell in zip(frame[ROW_COLUMN], frame["game_id"], frame[column], strict=True):
        found = statement_cell_problem(cell)
        if found is not None:
            problems.append(StatementProblem(int(row), str(game_id), *found))
    return problems


def split_statement_rows(
    frame: pd.DataFrame, problems: Sequence[StatementProblem]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows without problems, quarantined rows with a ``_failed_rules`` column)."""
    rules: dict[int, list[str]] = {}
    for problem in problems:
        rules.setdefault(problem.row, []).append(f"{problem.rule}: {problem.detail}")
    failed = frame[ROW_COLUMN].isin(rules)
    valid = frame[~failed].copy()
    valid.attrs.update(frame.attrs)
    quarantined = frame[failed].copy()
    quarantined["_failed_rules"] = quarantined[ROW_COLUMN].map(lambda row: "; ".join(rules[row]))
    return valid, quarantined


def collect_statements(frame: pd.DataFrame, column: str = STATEMENTS_COLUMN) -> pd.DataFrame:
    """One row per statement: ``statement_id``, ``game_id``, ``_row``, ``position``, ``text``.

    Raises :class:`StatementsError` naming file, row and rule when any cell is malformed.
    Statements are stripped of surrounding whitespace; repeats across games are kept (they
    count towards cluster sizes). Rows follow the table; see :func:`canonical_order`.
    """
    source = _require_columns(frame, column)
    problems = statement_cell_problems(frame, column)
    if problems:
        shown = "\n".join(f"  - {p.describe(source)}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise StatementsError(
            f"{source}: {len(problems)} malformed statements cells:\n{shown}{more}"
        )
    records = []
    for row, game_id, cell in zip(frame[ROW_COLUMN], frame["game_id"], frame[column], strict=True):
        for position, text in enumerate(parse_list_cell(cell), start=1):
            records.append(
                {
                    "statement_id": f"{game_id}:{position}",
                    "game_id": str(game_id),
                    ROW_COLUMN: int(row),
                    "position": position,
                    "text": text.strip(),
                }
            )
    statements = pd.DataFrame.from_records(
        records, columns=["statement_id", "game_id", ROW_COLUMN, "position", "text"]
    )
    statements.attrs["source"] = source
    return statements


def canonical_order(statements: pd.DataFrame) -> pd.DataFrame:
    """Statements sorted by text (code points), then game id and position, index reset.

    UMAP's layout depends on the order of its points, so statements are clustered in this
    order: the same statements in a reordered table give the same questionnaire.
    """
    columns = (statements["text"], statements["game_id"].astype(str), statements["position"])
    keys = list(zip(*columns, strict=True))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    ordered = statements.iloc[order].reset_index(drop=True)
    ordered.attrs.update(statements.attrs)
    return ordered


# --------------------------------------------------------------------------------------------
# Embedding geometry, projection and clustering


@contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS, OpenMP and numba run one thread inside, and get their thread counts back after.

    Set around the call, not at import, so the rest of the process keeps its threads. (UMAP
    itself sets numba to one thread for a seeded run and never restores it; this does.)
    """
    import numba
    from threadpoolctl import threadpool_limits

    previous = numba.get_num_threads()
    try:
        with threadpool_limits(limits=1):
            numba.set_num_threads(1)
            yield
    finally:
        numba.set_num_threads(previous)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), in float64."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0.0, 1.0, norms)


def _nearest_in_rows(dist: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k smallest entries ordered by (distance, column); ties never arbitrary."""
    n = dist.shape[1]
    margin = min(n, k + 16)
    if margin < n:
        candidates = np.argpartition(dist, margin - 1, axis=1)[:, :margin]
    else:
        candidates = np.tile(np.arange(n), (len(dist), 1))
    chosen = np.take_along_axis(dist, candidates, axis=1)
    order = np.lexsort((candidates, chosen), axis=1)
    candidates = np.take_along_axis(candidates, order, axis=1)
    nearest = candidates[:, :k]
    if margin < n:
        # Entries outside the candidates are >= the largest candidate; when that equals the
        # k-th distance a tie may lie outside, so those rows are sorted in full.
        kth = np.take_along_axis(dist, nearest[:, -1:], axis=1)[:, 0]
        widest = np.take_along_axis(dist, candidates[:, -1:], axis=1)[:, 0]
        for row in np.flatnonzero(kth >= widest):
            nearest[row] = np.argsort(dist[row], kind="stable")[:k]
    return nearest


def exact_neighbours(
    embeddings: np.ndarray, n_neighbors: int, metric: str = "cosine", block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN (indices, distances), each point first in its own row, as UMAP expects.

    UMAP's own path for fewer than 4,096 points calls a numba metric once per pair through
    scikit-learn (about a minute for 2,700 statements); this blockwise matrix product gives
    the same graph in about a second and is computed once for every seed. Distances are
    rounded to ``DISTANCE_DECIMALS`` and ties go to the lower index, so repeated statements
    (exact ties) and last-bit differences between matrix-product blockings never reorder
    neighbours, which would change the UMAP layout.
    """
    points = np.asarray(embeddings, dtype=np.float64)
    n = len(points)
    k = min(n_neighbors, n)
    if metric == "cosine":
        points = unit_rows(points)
    squared = np.einsum("ij,ij->i", points, points)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        with single_threaded():
            product = points[start:stop] @ points.T
        if metric == "cosine":
            dist = 1.0 - product
        else:
            dist = np.sqrt(
                np.clip(squared[start:stop, None] + squared[None, :] - 2 * product, 0, None)
            )
        dist = np.round(np.clip(np.nan_to_num(dist), 0.0, None), DISTANCE_DECIMALS)
        rows = np.arange(stop - start)
        dist[rows, rows + start] = -1.0  # self first, even among exact duplicates
        nearest = _nearest_in_rows(dist, k)
        dist[rows, rows + start] = 0.0
        indices[start:stop] = nearest
        distances[start:stop] = np.take_along_axis(dist, nearest, axis=1)
    return indices, distances


def project(
    embeddings: np.ndarray,
    neighbours: tuple[np.ndarray, np.ndarray],
    config: UmapConfig,
    seed: int,
    n_components: int | None = None,
    min_dist: float | None = None,
) -> np.ndarray:
    """UMAP layout of the embeddings on a precomputed k-NN graph; seeded, single-threaded."""
    import umap

    with warnings.catch_warnings(), single_threaded():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_neighbors=config.n_neighbors,
            n_components=n_components or config.n_components,
            metric=config.metric,
            min_dist=config.min_dist if min_dist is None else min_dist,
            n_epochs=config.n_epochs,
            random_state=seed,
            n_jobs=1,
            precomputed_knn=(neighbours[0].copy(), neighbours[1].copy()),  # UMAP edits them
        )
        layout = reducer.fit_transform(np.asarray(embeddings, dtype=np.float32))
    return np.asarray(layout, dtype=np.float64)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Cluster labels renumbered 0.. by size (descending), then first member; noise stays -1."""
    labels = np.asarray(labels)
    found = [label for label in np.unique(labels) if label != NOISE]
    keyed = sorted(found, key=lambda label: (-np.sum(labels == label), np.argmax(labels == label)))
    mapping = {old: new for new, old in enumerate(keyed)}
    return np.array([mapping.get(label, NOISE) for label in labels], dtype=np.int64)


def cluster_layout(layout: np.ndarray, config: HdbscanConfig) -> np.ndarray:
    """HDBSCAN labels of a layout, in canonical order."""
    import hdbscan

    with warnings.catch_warnings(), single_threaded():
        warnings.simplefilter("ignore")
        labels = hdbscan.HDBSCAN(
            min_cluster_size=config.min_cluster_size,
            min_samples=config.min_samples,
            cluster_selection_method=config.cluster_selection_method,
            core_dist_n_jobs=1,
        ).fit_predict(layout)
    return canonical_labels(labels)


@dataclass(frozen=True)
class Clustering:
    """One seeded UMAP + HDBSCAN run over all statements."""

    seed: int
    labels: np.ndarray
    layout: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max() + 1) if len(self.labels) else 0

    @property
    def noise_fraction(self) -> float:
        return float(np.mean(self.labels == NOISE)) if len(self.labels) else 0.0


def cluster_statements(
    embeddings: np.ndarray,
    recipe: DerivationRecipe,
    seed: int,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
    layout: np.ndarray | None = None,
) -> Clustering:
    """Project with UMAP and cluster with HDBSCAN under one seed.

    ``layout``: this seed's UMAP projection computed earlier (see :func:`layout_key`); it is
    then only clustered.
    """
    if len(embeddings) <= recipe.umap.n_neighbors:
        raise ValueError(
            f"{len(embeddings)} statements are too few for UMAP with "
            f"{recipe.umap.n_neighbors} neighbours"
        )
    if layout is None:
        if neighbours is None:
            neighbours = exact_neighbours(embeddings, recipe.umap.n_neighbors, recipe.umap.metric)
        layout = project(embeddings, neighbours, recipe.umap, seed)
    return Clustering(seed=seed, labels=cluster_layout(layout, recipe.hdbscan), layout=layout)


def layout_key(
    embeddings: np.ndarray,
    config: UmapConfig,
    seed: int,
    n_components: int | None = None,
    min_dist: float | None = None,
) -> str:
    """Content hash of everything a UMAP layout depends on (vectors, parameters, seed, code).

    Layouts are deterministic for a key, so a stored one can stand in for a recomputation.
    """
    from importlib.metadata import version

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    spec = {
        "shape": list(vectors.shape),
        "umap": config.model_dump(mode="json"),
        "n_components": n_components or config.n_components,
        "min_dist": config.min_dist if min_dist is None else min_dist,
        "seed": seed,
        "distance_decimals": DISTANCE_DECIMALS,
        "umap_learn": version("umap-learn"),
        "numpy": np.__version__,
    }
    digest = hashlib.sha256(vectors.tobytes())
    digest.update(json.dumps(spec, sort_keys=True).encode())
    return digest.hexdigest()


def pairwise_ari(runs: Sequence[Clustering]) -> np.ndarray:
    """Adjusted Rand index between every pair of runs (noise counts as one label)."""
    from sklearn.metrics import adjusted_rand_score

    matrix = np.eye(len(runs))
    for i, j in combinations(range(len(runs)), 2):
        matrix[i, j] = matrix[j, i] = adjusted_rand_score(runs[i].labels, runs[j].labels)
    return matrix


def select_main_run(runs: Sequence[Clustering], rule: Literal["medoid", "first"]) -> Clustering:
    """The run a questionnaire comes from: the first, or the medoid (highest mean ARI to the
    others; ties to the earlier run), which depends less on any single seed."""
    if not runs:
        raise ValueError("no clustering runs to choose from")
    if rule == "first" or len(runs) == 1:
        return runs[0]
    matrix = pairwise_ari(runs)
    return runs[int(np.argmax(matrix.sum(axis=1)))]


# --------------------------------------------------------------------------------------------
# Consolidation


@dataclass(frozen=True)
class ClusterSummary:
    """A group of statements: members, the k nearest the centroid, and its representative.

    ``labels`` are the clustering labels it was built from (several after a merge).
    """

    labels: tuple[int, ...]
    members: tuple[int, ...]
    nearest: tuple[int, ...]
    cohesion: float

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def representative(self) -> int:
        return self.nearest[0]


def summarize_members(
    embeddings: np.ndarray, members: Sequence[int], labels: Sequence[int], k: int
) -> ClusterSummary:
    """Centroid (normalized mean), the k members nearest it, and the mean cosine to it."""
    members = np.asarray(sorted(members), dtype=np.int64)
    vectors = unit_rows(np.asarray(embeddings)[members])
    centroid = vectors.mean(axis=0)
    centroid /= np.linalg.norm(centroid) or 1.0
    # rounded far above float64 noise (BLAS kernels, threads): repeated statements tie exactly
    similarity = np.round(vectors @ centroid, SIMILARITY_DECIMALS)
    order = np.lexsort((members, -similarity))  # nearest first; ties by statement index
    return ClusterSummary(
        labels=tuple(int(label) for label in labels),
        members=tuple(int(m) for m in members),
        nearest=tuple(int(members[i]) for i in order[:k]),
        cohesion=float(similarity.mean()),
    )


def summarize_clusters(embeddings: np.ndarray, labels: np.ndarray, k: int) -> list[ClusterSummary]:
    """One summary per cluster label (noise excluded), in label order."""
    labels = np.asarray(labels)
    return [
        summarize_members(embeddings, np.flatnonzero(labels == label), [int(label)], k)
        for label in sorted(set(labels.tolist()) - {NOISE})
    ]


def merge_near_duplicates(
    summaries: Sequence[ClusterSummary], embeddings: np.ndarray, threshold: float, k: int
) -> list[ClusterSummary]:
    """Merge clusters whose representatives have cosine >= ``threshold``.

    Clusters are visited largest first (ties: lowest label); each joins the most similar
    kept cluster when that one's representative is a near-duplicate of its own, else it is
    kept. A merged group is summarized again over the union of its members.
    """
    vectors = unit_rows(embeddings)
    visit = sorted(summaries, key=lambda s: (-s.size, s.labels))
    groups: list[list[ClusterSummary]] = []
    anchors: list[np.ndarray] = []
    for summary in visit:
        vector = vectors[summary.representative]
        if anchors:
            similarity = np.round(np.asarray(anchors) @ vector, SIMILARITY_DECIMALS)
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                groups[best].append(summary)
                continue
        groups.append([summary])
        anchors.append(vector)
    merged = []
    for group in groups:
        if len(group) == 1:
            merged.append(group[0])
            continue
        members = sorted({m for s in group for m in s.members})
        labels = [label for s in group for label in s.labels]
        merged.append(summarize_members(embeddings, members, labels, k))
    return merged


@dataclass(frozen=True)
class TraitDraft:
    """A trait before it has an id: its text, group and the clusters behind it."""

    text: str
    group: str
    sources: tuple[ClusterSummary, ...]

    @property
    def size(self) -> int:
        return sum(source.size for source in self.sources)


def extractive_drafts(kept: Sequence[ClusterSummary], texts: Sequence[str]) -> list[TraitDraft]:
    """One trait per kept cluster: its representative statement, verbatim, ungrouped."""
    return [TraitDraft(text=texts[s.representative], group="", sources=(s,)) for s in kept]


@runtime_checkable
class TextCompleter(Protocol):
    """Any text model: the llm consolidator only needs ``complete(prompt) -> reply``.

    A judge backend, an OpenAI-compatible client wrapper or a test fake all qualify.
    """

    def complete(self, prompt: str) -> str: ...


class ConsolidationError(ValueError):
    """The llm consolidator's reply breaks a rule (named in the message)."""


def cluster_keys(kept: Sequence[ClusterSummary]) -> list[str]:
    """Keys the llm consolidator sees for kept clusters: c01, c02... in the given order."""
    width = max(2, len(str(len(kept))))
    return [f"c{i:0{width}d}" for i in range(1, len(kept) + 1)]


LLM_INSTRUCTIONS = """\
You are consolidating what LLM judges said made the human witness in a Turing-test game seem
human. Below are clusters of their statements: each has a key, its size (number of
statements), a representative statement and examples.

Rewrite the clusters into a questionnaire of distinct, general statements about the rated
speaker, each one observable behaviour that a rater can score from 1 (disagree) to 5 (agree).
Merge clusters that express the same behaviour. Give every statement a short group name
(for example "Brevity & Casual Style"); use few groups. Use every cluster key once, either in
one statement's "clusters" or in "dropped" with a reason (e.g. not about the speaker).

Reply with JSON only, in this shape:
{"traits": [{"text": "...", "group": "...", "clusters": ["c01", "c04"]}],
 "dropped": [{"cluster": "c09", "reason": "..."}]}
"""


def llm_prompt(
    kept: Sequence[ClusterSummary], texts: Sequence[str], examples: int
) -> tuple[str, list[str]]:
    """The consolidation prompt and the cluster keys it uses."""
    keys = cluster_keys(kept)
    lines = [LLM_INSTRUCTIONS, "Clusters:"]
    for key, summary in zip(keys, kept, strict=True):
        lines.append(f"\n[{key}] size {summary.size}")
        lines.append(f"representative: {texts[summary.representative]}")
        for index in summary.nearest[1 : examples + 1]:
            lines.append(f"- {texts[index]}")
    return "\n".join(lines) + "\n", keys


def _reply_json(reply: str) -> dict:
    stripped = re.sub(r"^```(?:json)?\s*|\s*```$", "", reply.strip())
    start, stop = stripped.find("{"), stripped.rfind("}")
    if start < 0 or stop < start:
        raise ConsolidationError(f"rule 'reply is a JSON object': got {reply[:120]!r}")
    try:
        payload = json.loads(stripped[start : stop + 1])
    except json.JSONDecodeError as error:
        raise ConsolidationError(f"rule 'reply is a JSON object': {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("traits"), list):
        raise ConsolidationError("rule 'reply has a traits list': missing or not a list")
    return payload


@dataclass(frozen=True)
class LlmConsolidation:
    """Drafts from a text model, and the clusters it left out with the reason."""

    drafts: list[TraitDraft]
    dropped: dict[str, str] = field(default_factory=dict)
    prompt: str = ""
    reply: str = ""


def parse_llm_reply(
    reply: str, kept: Sequence[ClusterSummary], keys: Sequence[str]
) -> LlmConsolidation:
    """Drafts from a consolidation reply; unknown or reused cluster keys are errors.

    Clusters the reply neither uses nor drops are recorded as dropped ("not mentioned").
    """
    payload = _reply_json(reply)
    by_key = dict(zip(keys, kept, strict=True))
    used: dict[str, int] = {}
    drafts = []
    for number, item in enumerate(payload["traits"], start=1):
        if not isinstance(item, dict):
            raise ConsolidationError(f"trait {number}: rule 'trait is an object': {item!r:.80}")
        text = str(item.get("text") or "").strip()
        if not text:
            raise ConsolidationError(f"trait {number}: rule 'text is not empty'")
        sources = item.get("clusters")
        if not isinstance(sources, list) or not sources:
            raise ConsolidationError(f"trait {number}: rule 'names at least one cluster'")
        for key in sources:
            if key not in by_key:
                raise ConsolidationError(f"trait {number}: rule 'known cluster key': {key!r}")
            if key in used:
                raise ConsolidationError(
                    f"trait {number}: rule 'each cluster used once': {key} is already in "
                    f"trait {used[key]}"
                )
            used[key] = number
        drafts.append(
            TraitDraft(
                text=text,
                group=str(item.get("group") or "").strip(),
                sources=tuple(by_key[key] for key in sorted(sources, key=keys.index)),
            )
        )
    dropped: dict[str, str] = {}
    for entry in payload.get("dropped") or []:
        key = entry.get("cluster") if isinstance(entry, dict) else None
        if key not in by_key or key in used:
            raise ConsolidationError(f"dropped: rule 'known, unused cluster key': {entry!r:.80}")
        dropped[key] = str(entry.get("reason") or "")
    for key in keys:
        if key not in used and key not in dropped:
            dropped[key] = "not mentioned by the consolidator"
    if not drafts:
        raise ConsolidationError("rule 'at least one trait': the reply has none")
    return LlmConsolidation(drafts=drafts, dropped=dropped, reply=reply)


def llm_drafts(
    kept: Sequence[ClusterSummary],
    texts: Sequence[str],
    completer: TextCompleter,
    examples: int = 5,
) -> LlmConsolidation:
    """Ask a text model to rewrite and group the kept clusters' representatives."""
    if not callable(getattr(completer, "complete", None)):
        raise TypeError(f"{completer!r} has no complete(prompt: str) -> str method")
    prompt, keys = llm_prompt(kept, texts, examples)
    reply = completer.complete(prompt)
    if not isinstance(reply, str):
        raise ConsolidationError(f"rule 'reply is text': got {type(reply).__name__}")
    result = parse_llm_reply(reply, kept, keys)
    return LlmConsolidation(result.drafts, result.dropped, prompt, reply)


def trait_id_width(n_traits: int) -> int:
    return max(2, len(str(n_traits)))


def number_drafts(drafts: Sequence[TraitDraft]) -> list[tuple[str, TraitDraft]]:
    """The id rule: size descending, then text, then lowest clustering label; ids t01.."""
    ordered = sorted(
        drafts, key=lambda d: (-d.size, d.text, min(label for s in d.sources for label in s.labels))
    )
    width = trait_id_width(len(ordered))
    return [(f"t{number:0{width}d}", draft) for number, draft in enumerate(ordered, start=1)]


def assemble_questionnaire(
    drafts: Sequence[TraitDraft],
    texts: Sequence[str],
    name: str,
    derivation: dict | None = None,
    examples: int = 5,
) -> Questionnaire:
    """Number drafts by :func:`number_drafts` and attach provenance to each trait.

    ``provenance``: cluster size, clustering labels, representative statement(s), cohesion
    (mean cosine to the centroid) and up to ``examples`` statements nearest the centroid.
    """
    if not drafts:
        raise ValueError(f"questionnaire {name!r}: no clusters to derive traits from")
    traits = []
    for trait_id, draft in number_drafts(drafts):
        nearest = [i for source in draft.sources for i in source.nearest]
        traits.append(
            Trait(
                id=trait_id,
                text=draft.text,
                group=draft.group,
                provenance={
                    "cluster_size": draft.size,
                    "cluster_labels": sorted(label for s in draft.sources for label in s.labels),
                    "representatives": [texts[s.representative] for s in draft.sources],
                    "cohesion": round(float(np.mean([s.cohesion for s in draft.sources])), 4),
                    "examples": [texts[i] for i in nearest[:examples]],
                },
            )
        )
    return Questionnaire(name=name, traits=tuple(traits), derivation=dict(derivation or {}))


def trait_members(drafts: Sequence[TraitDraft]) -> dict[str, set[int]]:
    """Trait id -> indices of the statements behind it."""
    return {
        trait_id: {m for source in draft.sources for m in source.members}
        for trait_id, draft in number_drafts(drafts)
    }


Consolidator = Literal["extractive", "llm"]


@dataclass(frozen=True)
class Derivation:
    """A derived questionnaire and everything behind it."""

    questionnaire: Questionnaire
    main: Clustering
    kept: list[ClusterSummary]
    members: dict[str, set[int]]
    dropped: dict[str, str] = field(default_factory=dict)
    llm_prompt: str | None = None
    llm_reply: str | None = None


def consolidate(
    embeddings: np.ndarray,
    texts: Sequence[str],
    main: Clustering,
    recipe: DerivationRecipe,
    consolidator: Consolidator = "extractive",
    completer: TextCompleter | None = None,
    name: str = "derived",
    derivation: dict | None = None,
) -> Derivation:
    """Summarize the main run's clusters, merge near-duplicates and write the questionnaire.

    ``derivation`` (input hashes, file names...) is stored in the questionnaire with the
    recipe, the seeds and the counts; nothing run-specific, so reruns stay byte-identical.
    """
    config = recipe.consolidation
    summaries = summarize_clusters(embeddings, main.labels, config.k_nearest)
    kept = merge_near_duplicates(summaries, embeddings, config.merge_threshold, config.k_nearest)
    if not kept:
        raise ValueError(
            f"{name}: HDBSCAN found no cluster among {len(texts)} statements "
            f"(min_cluster_size {recipe.hdbscan.min_cluster_size})"
        )
    prompt = reply = None
    dropped: dict[str, str] = {}
    if consolidator == "extractive":
        drafts = extractive_drafts(kept, texts)
    elif consolidator == "llm":
        if completer is None:
            raise ValueError("the llm consolidator needs a completer with complete(prompt) -> str")
        result = llm_drafts(kept, texts, completer, config.llm_examples)
        drafts, dropped, prompt, reply = result.drafts, result.dropped, result.prompt, result.reply
    else:
        raise ValueError(f"unknown consolidator {consolidator!r}: extractive | llm")
    meta = {
        **(derivation or {}),
        "method": "UMAP + HDBSCAN on all-MiniLM-L6-v2 embeddings",
        "consolidator": consolidator,
        "recipe": recipe.model_dump(mode="json"),
        "recipe_digest": recipe.digest,
        "main_seed": main.seed,
        "n_statements": len(texts),
        "n_clusters": main.n_clusters,
        "n_merged_clusters": len(kept),
        "noise_fraction": round(main.noise_fraction, 4),
        "id_rule": "traits ordered by statements behind them (descending), then text; t01..",
        "dropped_clusters": dropped,
    }
    questionnaire = assemble_questionnaire(drafts, texts, name, meta, config.k_nearest)
    return Derivation(
        questionnaire=questionnaire,
        main=main,
        kept=kept,
        members=trait_members(drafts),
        dropped=dropped,
        llm_prompt=prompt,
        llm_reply=reply,
    )


@dataclass(frozen=True)
class RecipeRun:
    """A whole recipe over a set of statements: vectors, every seeded run, the questionnaire."""

    statements: pd.DataFrame
    embeddings: np.ndarray
    runs: list[Clustering]
    derivation: Derivation


def derive_questionnaire(
    statements: pd.DataFrame,
    recipe: DerivationRecipe,
    cache: EmbeddingCache | None = None,
    name: str = "derived",
    derivation: dict | None = None,
) -> RecipeRun:
    """Order, embed, cluster under every recipe seed and consolidate (extractive), in one call.

    ``statements``: :func:`collect_statements` rows. The ``derive_traits`` flow runs the same
    steps as separate tasks (and reuses stored layouts); this is the recipe for a script or
    a child process, e.g. to check that two processes with other threads and CPU kernels
    write the same questionnaire.
    """
    statements = canonical_order(statements)
    texts = statements["text"].tolist()
    embeddings = embed_exact(texts, cache)
    neighbours = exact_neighbours(embeddings, recipe.umap.n_neighbors, recipe.umap.metric)
    runs = [cluster_statements(embeddings, recipe, seed, neighbours) for seed in recipe.seeds]
    main = select_main_run(runs, recipe.main_run)
    result = consolidate(embeddings, texts, main, recipe, name=name, derivation=derivation)
    return RecipeRun(statements=statements, embeddings=embeddings, runs=runs, derivation=result)


# --------------------------------------------------------------------------------------------
# Coverage and stability


def coverage_table(
    reference: Questionnaire,
    reference_vectors: np.ndarray,
    derived: Questionnaire,
    derived_vectors: np.ndarray,
) -> pd.DataFrame:
    """For each reference trait: the best-matching derived trait and their cosine."""
    similarity = unit_rows(reference_vectors) @ unit_rows(derived_vectors).T
    best = np.argmax(similarity, axis=1)
    return pd.DataFrame(
        {
            "reference_id": reference.trait_ids,
            "reference_group": [t.group for t in reference.traits],
            "reference_text": [t.text for t in reference.traits],
            "derived_id": [derived.traits[j].id for j in best],
            "derived_text": [derived.traits[j].text for j in best],
            "cosine": np.round(similarity[np.arange(len(best)), best], 4),
        }
    )


def trait_centroids(embeddings: np.ndarray, members: dict[str, set[int]]) -> np.ndarray:
    """Unit centroid of the statements behind each trait, in the order of ``members``."""
    vectors = unit_rows(embeddings)
    return unit_rows(np.vstack([vectors[sorted(m)].mean(axis=0) for m in members.values()]))


def statement_traits(n_statements: int, members: dict[str, set[int]]) -> list[str]:
    """The trait id each statement lies behind ("" for unclustered or dropped statements)."""
    owner = [""] * n_statements
    for trait_id, indices in members.items():
        for index in indices:
            owner[index] = trait_id
    return owner


def coverage_metric(threshold: float) -> str:
    return f"coverage.n_at_{threshold:.2f}"


def coverage_counts(table: pd.DataFrame, thresholds: Sequence[float]) -> dict[str, int]:
    """``coverage.n_at_0.70`` -> number of reference traits matched at cosine >= 0.70."""
    return {coverage_metric(t): int((table["cosine"] >= t - 1e-9).sum()) for t in thresholds}


def coverage_by_seed(
    runs: Sequence[Clustering],
    embeddings: np.ndarray,
    texts: Sequence[str],
    recipe: DerivationRecipe,
    reference: Questionnaire,
    reference_vectors: np.ndarray,
) -> pd.DataFrame:
    """Coverage of each seeded run's own extractive questionnaire: one row per seed.

    A questionnaire comes from one run, so its coverage moves with the seed (on the GPT-5
    statements, by a few traits); this spread is the margin a single figure deserves. An
    extractive trait is a statement, so its vector is that statement's embedding.
    """
    position = {text: index for index, text in enumerate(texts)}
    rows = []
    for run in runs:
        questionnaire = consolidate(embeddings, texts, run, recipe).questionnaire
        vectors = np.asarray(embeddings)[[position[t.text] for t in questionnaire.traits]]
        table = coverage_table(reference, reference_vectors, questionnaire, vectors)
        rows.append(
            {
                "seed": run.seed,
                "n_clusters": run.n_clusters,
                "n_traits": len(questionnaire.traits),
                **coverage_counts(table, recipe.coverage_thresholds),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class StabilityReport:
    """Agreement between seeded clusterings, and which derived traits every run finds."""

    seeds: tuple[int, ...]
    pairwise_ari: tuple[tuple[int, int, float], ...]
    survival: dict[str, float]
    n_stable_traits: int

    @property
    def ari_mean(self) -> float:
        return float(np.mean([ari for _, _, ari in self.pairwise_ari]))

    @property
    def ari_min(self) -> float:
        return float(np.min([ari for _, _, ari in self.pairwise_ari]))

    def to_dict(self) -> dict:
        return {
            "seeds": list(self.seeds),
            "ari_mean": round(self.ari_mean, 4),
            "ari_min": round(self.ari_min, 4),
            "pairwise_ari": [
                {"seeds": [a, b], "ari": round(ari, 4)} for a, b, ari in self.pairwise_ari
            ],
            "n_stable_traits": self.n_stable_traits,
            "survival": {key: round(value, 4) for key, value in self.survival.items()},
        }


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def assess_stability(
    runs: Sequence[Clustering],
    traits: dict[str, set],
    embeddings: np.ndarray,
    recipe: DerivationRecipe,
) -> StabilityReport:
    """ARI between every pair of runs (noise counts as one label) and trait survival.

    A derived trait survives in a run when some merged cluster of that run shares at least
    ``recipe.stability.survival_jaccard`` of its statements (Jaccard); it is stable when it
    survives in every run.
    """
    if len(runs) < 2:
        raise ValueError("stability needs at least two runs")
    matrix = pairwise_ari(runs)
    pairwise = tuple(
        (runs[i].seed, runs[j].seed, float(matrix[i, j]))
        for i, j in combinations(range(len(runs)), 2)
    )
    consolidation = recipe.consolidation
    run_groups = []
    for run in runs:
        summaries = summarize_clusters(embeddings, run.labels, consolidation.k_nearest)
        kept = merge_near_duplicates(
            summaries, embeddings, consolidation.merge_threshold, consolidation.k_nearest
        )
        run_groups.append([set(s.members) for s in kept])
    threshold = recipe.stability.survival_jaccard
    survival = {}
    for trait_id, members in traits.items():
        found = [
            max((_jaccard(members, group) for group in groups), default=0.0) >= threshold
            for groups in run_groups
        ]
        survival[trait_id] = float(np.mean(found))
    stable = sum(1 for value in survival.values() if value == 1.0)
    return StabilityReport(tuple(run.seed for run in runs), pairwise, survival, stable)


# --------------------------------------------------------------------------------------------
# Reports


def cluster_listing(
    questionnaire: Questionnaire, n_statements: int, n_noise: int, dropped: dict[str, str]
) -> str:
    """Markdown: every derived trait with its size, source clusters and nearest statements."""
    lines = [
        f"# {questionnaire.name}: derived traits",
        "",
        f"{len(questionnaire.traits)} traits from {n_statements} statements "
        f"({n_noise} unclustered). Version `{questionnaire.version}`.",
        "",
    ]
    for trait in questionnaire.traits:
        provenance = getattr(trait, "provenance", {}) or {}
        group = f" ({trait.group})" if trait.group else ""
        lines += [
            f"## {trait.id}{group}: {trait.text}",
            "",
            f"- statements: {provenance.get('cluster_size')}, clustering labels "
            f"{provenance.get('cluster_labels')}, cohesion {provenance.get('cohesion')}",
            *[f"- > {example}" for example in provenance.get("examples", [])],
            "",
        ]
    if dropped:
        lines += ["## Dropped clusters", ""]
        lines += [f"- {key}: {reason}" for key, reason in sorted(dropped.items())]
    return "\n".join(lines) + "\n"
