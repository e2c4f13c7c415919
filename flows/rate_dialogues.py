"""Flow ``rate_dialogues``: dialogues + judge config -> ratings table (one column per trait id).

Every dialogue ends rated or failed with its reason. When the judge has an out-of-domain signal
(the local judge's ``out_of_domain`` column), the share of dialogues it flags is logged as
``ood_fraction``. Results are committed to a SQLite cache as they arrive, so a killed run,
started again, asks only for what is missing::

    hal rate synthlabs/candidates_test.csv --speakers doctor_visit \\
        --questionnaire questionnaires/hal32q.json --model gpt-5-mini --concurrency 64
    hal rate my_dialogues.csv --judge judge.yaml --limit 200   # judge.yaml: a JudgeConfig
    hal rate dialogues.csv --backend openai --base-url http://localhost:8000/v1 --model llama
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import SpeakerTags
from hal_core.forms import Internal, RunForm
from hal_core.judges import JudgeConfig
from hal_core.judges.presets import LOCAL, JudgeChoice
from hal_core.judges.runner import ratings_table
from hal_core.settings import get_settings
from tasks import tracking
from tasks.rating import (
    limit_suffix,
    log_rating_run,
    rate_with_judge,
    read_dialogues,
    read_questionnaire,
    save_table,
    summary_line,
)


class RateDialoguesParams(RunForm):
    """Parameters of the rating stage (the Prefect UI renders them as a form). Stored by
    Prefect as the flow run's parameters: the judge config refuses secrets, so none is kept."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    input_file: str = Field(
        description="CSV with one dialogue per row; relative paths are looked up here first, "
        "then in the data folder."
    )
    text_column: str = Field(default="dialogue", description="Column with the dialogue text.")
    id_column: str | None = Field(
        default=None, description="Column with unique item ids; empty = the row number."
    )
    questionnaire_file: str = Field(
        default="questionnaires/hal32q.json", description="Questionnaire JSON (traits by id)."
    )
    speakers: Literal["turing", "doctor_visit"] = Field(
        default="turing",
        description="Who is rated: turing = witness W (interrogator I), doctor_visit = patient "
        "P (doctor D).",
    )
    speaker_tags: SpeakerTags | None = Field(
        default=None,
        description="Custom line tags of the rated and other speakers (wins over speakers).",
    )
    judge: JudgeChoice = Field(
        default=LOCAL,
        validate_default=True,
        description="Which judge rates: local = the newest judge trained by "
        "train-local-judge, or a config of infra/judges/ by name (the CLI's --judge also "
        "takes a config file).",
    )
    output_file: str | None = Field(
        default=None,
        description="Ratings CSV; empty = HAL_HOME/ratings/INPUT[-firstLIMIT]-JUDGE.csv.",
    )
    cache_file: str | None = Field(
        default=None, description="SQLite rating cache; empty = HAL_HOME/cache/ratings.sqlite."
    )
    retry_failures: Literal["none", "transient", "all"] = Field(
        default="transient",
        description="Which failures stored by earlier runs are asked again.",
    )
    limit: int | None = Field(
        default=None, ge=1, description="Rate only the first N rows; empty = all."
    )
    progress: bool = Field(default=False, description="Show a progress bar on stderr.")
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None


class RateDialoguesResult(BaseModel):
    """What the rating stage produced, for the next stage to read."""

    run_id: str = Field(description="MLflow run of this stage.")
    output_file: str = Field(description="Ratings CSV: item_id, one column per trait id, status.")
    judge_fingerprint: str = Field(description="Hash of the judge's answer-changing settings.")
    questionnaire_version: str = Field(description="Version of the questionnaire rated on.")
    metrics: dict[str, float] = Field(
        description="Counts, tokens, latency and cost; ood_fraction (the share of dialogues "
        "the judge called out of its domain) when the judge reports one, as the local judge does."
    )


def judge_label(judge: JudgeConfig) -> str:
    """``backend:model`` of a judge config, for run tags."""
    model = getattr(judge, "model", None) or Path(getattr(judge, "model_path", "") or "").name
    return f"{judge.backend}:{model}" if model else judge.backend


def _tags(params: RateDialoguesParams) -> SpeakerTags:
    if params.speaker_tags is not None:
        return params.speaker_tags
    return SpeakerTags.doctor_visit() if params.speakers == "doctor_visit" else SpeakerTags.turing()


@flow(name="rate_dialogues", log_prints=True)
def rate_dialogues(params: RateDialoguesParams) -> RateDialoguesResult:
    """Rate the rated speaker of every dialogue on every trait of a questionnaire."""
    settings = get_settings()
    input_path = settings.input_path(params.input_file)
    questionnaire_path = settings.input_path(params.questionnaire_file)
    cache_path = Path(params.cache_file or settings.home_dir / "cache" / "ratings.sqlite")
    tags = _tags(params)
    with tracking.stage_run(
        "rate_dialogues",
        settings.experiment_rating,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        hashes = tracking.log_inputs(
            run_id, {"dialogues": input_path, "questionnaire": questionnaire_path}
        )
        questionnaire = read_questionnaire(questionnaire_path)
        tracking.tag_run(
            run_id,
            {
                "hal.judge": judge_label(params.judge),
                "hal.questionnaire": f"{questionnaire.name}@{questionnaire.version[:12]}",
            },
        )
        dialogues = read_dialogues(input_path, params.text_column, params.id_column, params.limit)
        rating = rate_with_judge(
            dialogues[params.text_column].tolist(),
            questionnaire,
            tags,
            params.judge,
            cache_path,
            params.retry_failures,
            settings.data_dir,
            params.progress,
        )
        table = ratings_table(rating, questionnaire, dialogues["item_id"].tolist())
        output_path = Path(
            params.output_file
            or settings.home_dir
            / "ratings"
            / f"{input_path.stem}{limit_suffix(params.limit)}-{rating.fingerprint[:12]}.csv"
        )
        save_table(table, output_path)
        metrics = log_rating_run(
            run_id,
            rating,
            params.judge,
            questionnaire,
            tags,
            output_path,
            hashes,
            params.retry_failures,
        )
        print(f"ratings: {output_path} {summary_line(metrics)}")
    return RateDialoguesResult(
        run_id=run_id,
        output_file=str(output_path),
        judge_fingerprint=rating.fingerprint,
        questionnaire_version=questionnaire.version,
        metrics=metrics,
    )
