"""Replays recorded ratings (e.g. the paper's GPT-5 ratings), matched by dialogue text hash.

Lists of ratings are positional in the questionnaire that was asked (``order_questionnaire``,
or the one being rated); they are turned into ratings by trait id on load, so a reordered
questionnaire gets the same ratings per trait. A dialogue with no recording is a failure of
kind ``missing`` (or stops the run when ``strict``) - never a default rating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hal_core.dialogue import SpeakerTags
from hal_core.judges.config import RecordedJudgeConfig
from hal_core.judges.prompting import normalize_text, text_sha256
from hal_core.judging import (
    Game,
    JudgeConfigurationError,
    JudgeError,
    RatingResult,
    StatementProposal,
    item_ids_or_positions,
)
from hal_core.questionnaire import TRAIT_ID_PATTERN, Questionnaire
from hal_core.tables import ROW_COLUMN, file_sha256, parse_list_cell, read_table


@dataclass(frozen=True)
class Recording:
    """Ratings of one dialogue: a positional list or a mapping by trait id, and its origin."""

    values: tuple[float, ...] | None
    by_id: dict[str, float] | None
    source: str


def _resolve(path: Path, data_dir: Path | None) -> Path:
    if path.is_absolute() or data_dir is None or path.exists():
        return path
    return data_dir / path


def _game_key(transcript_a: str, transcript_b: str) -> str:
    blob = f"{normalize_text(transcript_a)}\x00{normalize_text(transcript_b)}"
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RecordedJudge:
    """Implements Judge and StatementProposer from files; its fingerprint hashes the files."""

    def __init__(
        self,
        recordings: dict[str, Recording],
        fingerprint: str,
        order: Questionnaire | None = None,
        strict: bool = False,
        proposals: dict[str, StatementProposal] | None = None,
        sources: Sequence[str] = (),
    ) -> None:
        self._recordings = recordings
        self._fingerprint = fingerprint
        self._order = order
        self._strict = strict
        self._proposals = proposals or {}
        self._sources = list(sources)

    def __len__(self) -> int:
        return len(self._recordings)

    def fingerprint(self) -> str:
        return self._fingerprint

    @classmethod
    def from_config(
        cls, config: RecordedJudgeConfig, data_dir: str | Path | None = None
    ) -> RecordedJudge:
        data_dir = Path(data_dir) if data_dir else None
        paths = [_resolve(Path(p), data_dir) for p in config.paths]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise JudgeConfigurationError(f"recorded ratings not found: {missing}")
        order = None
        if config.order_questionnaire is not None:
            order = Questionnaire.load(_resolve(Path(config.order_questionnaire), data_dir))
        recordings: dict[str, Recording] = {}
        for path in paths:
            table = read_table(path)
            for columns in config.columns:
                cls._load(table, path, columns.text, columns.ratings, recordings, config, order)
        proposals: dict[str, StatementProposal] = {}
        statement_paths = [_resolve(Path(p), data_dir) for p in config.statements_paths]
        for path in statement_paths:
            cls._load_statements(path, proposals)
        digest = hashlib.sha256()
        digest.update(config.model_dump_json(exclude={"paths", "statements_paths"}).encode())
        for path in [*paths, *statement_paths]:
            digest.update(file_sha256(path).encode())
        if order is not None:
            digest.update(order.version.encode())
        return cls(
            recordings,
            "recorded-" + digest.hexdigest()[:32],
            order=order,
            strict=config.strict,
            proposals=proposals,
            sources=[str(p) for p in paths],
        )

    @staticmethod
    def _load(
        table: pd.DataFrame,
        path: Path,
        text_column: str,
        ratings_column: str | None,
        recordings: dict[str, Recording],
        config: RecordedJudgeConfig,
        order: Questionnaire | None,
    ) -> None:
        needed = [text_column] + ([ratings_column] if ratings_column else [])
        absent = [column for column in needed if column not in table.columns]
        if absent:
            raise JudgeConfigurationError(f"{path}: no column(s) {absent}")
        trait_columns = [c for c in table.columns if TRAIT_ID_PATTERN.match(str(c))]
        if ratings_column is None and not trait_columns:
            raise JudgeConfigurationError(f"{path}: no trait-id columns (t01, ...) to replay")
        for _, row in table.iterrows():
            where = f"{path} row {row[ROW_COLUMN]}"
            text = row[text_column]
            if not isinstance(text, str) or not text.strip():
                continue
            if ratings_column is not None:
                values = parse_list_cell(row[ratings_column])
                if values is None or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values
                ):
                    raise JudgeConfigurationError(
                        f"{where}: {ratings_column} is not a list of numbers"
                    )
                if order is not None and len(values) != len(order.traits):
                    raise JudgeConfigurationError(
                        f"{where}: {len(values)} ratings, order questionnaire {order.name} has "
                        f"{len(order.traits)} traits"
                    )
                recording = Recording(tuple(float(v) for v in values), None, where)
            else:
                if row[trait_columns].isna().any():
                    continue  # a failed row of a ratings table: nothing recorded
                by_id = {c: float(row[c]) for c in trait_columns}
                recording = Recording(None, by_id, where)
            key = text_sha256(text)
            previous = recordings.get(key)
            if previous is None:
                recordings[key] = recording
            elif config.on_conflict == "error" and (previous.values, previous.by_id) != (
                recording.values,
                recording.by_id,
            ):
                raise JudgeConfigurationError(
                    f"{where}: the same dialogue is recorded in {previous.source} with "
                    "different ratings (rule: one recording per dialogue; set "
                    "on_conflict='first' to keep the first)"
                )

    @staticmethod
    def _load_statements(path: Path, proposals: dict[str, StatementProposal]) -> None:
        if not path.is_file():
            raise JudgeConfigurationError(f"recorded statements not found: {path}")
        table = read_table(path)
        needed = [
            "game_id",
            "conversation_A_transcript",
            "conversation_B_transcript",
            "aijudge_verdict",
            "human_characteristics",
        ]
        absent = [column for column in needed if column not in table.columns]
        if absent:
            raise JudgeConfigurationError(f"{path}: no column(s) {absent}")
        for _, row in table.iterrows():
            statements = parse_list_cell(row["human_characteristics"])
            key = _game_key(
                str(row["conversation_A_transcript"]), str(row["conversation_B_transcript"])
            )
            if statements is None:
                proposal = StatementProposal(
                    game_id=str(row["game_id"]),
                    error=f"{path} row {row[ROW_COLUMN]}: human_characteristics is not a list",
                    error_kind="invalid",
                )
            else:
                elapsed = pd.to_numeric(row.get("elapsed_time"), errors="coerce")
                proposal = StatementProposal(
                    game_id=str(row["game_id"]),
                    verdict=str(row["aijudge_verdict"]).strip().upper() or None,
                    statements=[str(s) for s in statements],
                    latency_s=None if pd.isna(elapsed) else float(elapsed),
                )
            proposals.setdefault(key, proposal)

    def _ratings(self, recording: Recording, questionnaire: Questionnaire) -> dict[str, float]:
        if recording.by_id is not None:
            by_id = recording.by_id
        else:
            order = self._order or questionnaire
            if len(recording.values) != len(order.traits):
                raise ValueError(
                    f"{recording.source}: {len(recording.values)} ratings, questionnaire "
                    f"{order.name} has {len(order.traits)} traits"
                )
            by_id = dict(zip(order.trait_ids, recording.values, strict=True))
        absent = [t for t in questionnaire.trait_ids if t not in by_id]
        if absent:
            raise ValueError(f"{recording.source}: no recorded rating for traits {absent}")
        scale = questionnaire.scale
        outside = {
            t: by_id[t] for t in questionnaire.trait_ids if not scale.min <= by_id[t] <= scale.max
        }
        if outside:
            raise ValueError(
                f"{recording.source}: ratings outside {scale.min}-{scale.max}: {outside}"
            )
        return {t: by_id[t] for t in questionnaire.trait_ids}

    def rate(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None = None,
    ) -> list[RatingResult]:
        ids = item_ids_or_positions(dialogues, item_ids)
        results = []
        for item_id, text in zip(ids, dialogues, strict=True):
            digest = text_sha256(text)
            recording = self._recordings.get(digest)
            if recording is None:
                reason = (
                    f"no recorded rating for this dialogue (sha256 {digest[:12]}) in "
                    f"{len(self._sources)} file(s)"
                )
                if self._strict:
                    raise JudgeError(f"item {item_id}: {reason}")
                results.append(RatingResult(item_id=item_id, error=reason, error_kind="missing"))
                continue
            try:
                ratings = self._ratings(recording, questionnaire)
            except ValueError as error:
                results.append(
                    RatingResult(item_id=item_id, error=str(error), error_kind="invalid")
                )
                continue
            results.append(RatingResult(item_id=item_id, ratings=ratings, latency_s=0.0))
        return results

    def propose_statements(
        self, games: Sequence[Game], tags: SpeakerTags
    ) -> list[StatementProposal]:
        proposals = []
        for game in games:
            found = self._proposals.get(_game_key(game.transcript_a, game.transcript_b))
            if found is None:
                proposals.append(
                    StatementProposal(
                        game_id=game.game_id, error="no recorded statements", error_kind="missing"
                    )
                )
            else:
                proposals.append(found.model_copy(update={"game_id": game.game_id}))
        return proposals
