"""Judges: rate any dialogue on any questionnaire through an LLM API, a local model or
recorded ratings. Build one from a typed config with :func:`build_judge`; rate through the
cache with :func:`rate_cached` (any question, through :func:`ask_cached`)."""

from hal_core.judges.config import (
    HFJudgeConfig,
    JudgeConfig,
    LocalJudgeConfig,
    OpenAIJudgeConfig,
    RecordedColumns,
    RecordedJudgeConfig,
    load_judge_config,
    parse_judge_config,
)
from hal_core.judges.registry import LOCAL_JUDGE_TARGET, backends, build_judge, register_backend
from hal_core.judges.runner import (
    JudgeRun,
    Question,
    RatingRun,
    RatingStats,
    RunPlan,
    ask_cached,
    rate_cached,
    ratings_table,
)

__all__ = [
    "LOCAL_JUDGE_TARGET",
    "HFJudgeConfig",
    "JudgeConfig",
    "JudgeRun",
    "LocalJudgeConfig",
    "OpenAIJudgeConfig",
    "Question",
    "RatingRun",
    "RatingStats",
    "RecordedColumns",
    "RecordedJudgeConfig",
    "RunPlan",
    "ask_cached",
    "backends",
    "build_judge",
    "load_judge_config",
    "parse_judge_config",
    "rate_cached",
    "ratings_table",
    "register_backend",
]
