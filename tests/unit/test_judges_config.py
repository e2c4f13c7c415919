"""Judge configs never hold a secret, and refusing one never repeats it: not in the error, its
JSON, a traceback, nor the parameters Prefect would store for a stage."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.collect_statements import CollectStatementsParams
from flows.rate_dialogues import RateDialoguesParams
from hal_core.judges import HFJudgeConfig, LocalJudgeConfig, OpenAIJudgeConfig
from hal_core.judges.config import load_judge_config, looks_like_secret, parse_judge_config

KEY = "sk-proj-Hal7SECRETkey0123456789abcdef"


def _everything_said(error: BaseException) -> str:
    """The message, the traceback a user would see, and pydantic's JSON of the errors."""
    text = str(error) + "".join(traceback.format_exception(error))
    if isinstance(error, ValidationError):
        text += error.json()
    return text


def _refusals(field: str, value: object):
    """Every way a judge config is built: directly, from a mapping, inside a stage's params."""
    yield lambda: OpenAIJudgeConfig(**{field: value})
    yield lambda: parse_judge_config({field: value})
    yield lambda: RateDialoguesParams(input_file="d.csv", judge={"backend": "openai", field: value})
    yield lambda: CollectStatementsParams(judge={"backend": "openai", field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key", KEY),
        ("model", KEY),
        ("api_key_env", KEY),
        ("api_key_secret_block", f"Bearer {KEY}"),
        ("cache_namespace", KEY),
        ("base_url", f"http://judge:{KEY}@localhost:8000/v1"),
        ("base_url", f"https://localhost:8000/v1?api_key={KEY}"),
    ],
)
def test_a_secret_in_any_field_is_refused_without_being_repeated(field: str, value: str) -> None:
    for build in _refusals(field, value):
        with pytest.raises(ValueError) as caught:
            build()
        said = _everything_said(caught.value)
        assert KEY not in said
        assert field in said
    assert "HAL_JUDGE_API_KEY" in str(caught.value) and "api_key_secret_block" in str(caught.value)
    if field == "base_url":  # the refusal names the endpoint, less the credential
        assert "localhost:8000" in str(caught.value) and "***" in str(caught.value)


def test_an_inline_api_key_in_a_judge_yaml_is_refused_with_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "judge.yaml"
    path.write_text(f"model: gpt-5-mini\napi_key: {KEY}\n")
    with pytest.raises(ValueError) as caught:
        load_judge_config(path)
    message = str(caught.value)
    assert KEY not in _everything_said(caught.value)
    assert message.startswith(f"{path}: not a judge config: openai.api_key: a secret never")
    assert "HAL_JUDGE_API_KEY" in message and "api_key_env" in message


def test_a_yaml_error_on_the_line_with_the_key_does_not_quote_the_line(tmp_path: Path) -> None:
    path = tmp_path / "judge.yaml"
    path.write_text(f"model: gpt-5-mini\napi_key: {KEY}: oops\n")
    with pytest.raises(ValueError, match="not valid YAML at line 2") as caught:
        load_judge_config(path)
    assert KEY not in _everything_said(caught.value)


def test_ordinary_configs_are_accepted_and_their_params_hold_no_secret() -> None:
    config = OpenAIJudgeConfig(
        model="meta-llama/Llama-3.2-1B-Instruct",
        base_url="http://localhost:8000/v1",
        api_key_env="MY_JUDGE_KEY",
        api_key_secret_block="judge-key",
        cache_namespace="lab-a100",
    )
    assert config.endpoint == "http://localhost:8000/v1"
    params = RateDialoguesParams(input_file="d.csv", judge=config)
    assert RateDialoguesParams.model_validate(params.model_dump(mode="json")) == params
    assert HFJudgeConfig(model_path="/models/smollm2-135m").model_path.endswith("135m")
    assert LocalJudgeConfig(model_path="runs/local-judge", options={"batch_size": 8})
    for name in ("gpt-5-mini", "Qwen/Qwen2.5-7B-Instruct-AWQ", "OPENAI_API_KEY", "skeleton-1b"):
        assert not looks_like_secret(name)
    with pytest.raises(ValueError, match="api_key_env names an environment variable"):
        OpenAIJudgeConfig(api_key_env="my key")


def test_a_key_hidden_in_local_judge_options_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        parse_judge_config({"backend": "local", "model_path": "m", "options": {"token": KEY}})
    assert KEY not in _everything_said(caught.value) and "options" in str(caught.value)


PATH_KEYS = [
    ("http://host/v1/{key}/", "sk-proj-Hal7SECRETkey0123456789abcdef"),
    ("https://host/{key}/v1", "sk-ant-api03-Zq8vN2kLw5Rt9xYp3Hd7Jf1Mc6Bg4Ve0"),
    ("https://host/v1/{key}", "hf_QwErTy7UiOp3AsDfGh9JkLzXcV5BnM2lKj"),
    ("https://host/openai/{key}/v1", "gsk_8fJ2kLq9Zx4Vb7Nm1Pw3Rt6Yh0Ds5Ga"),
    ("https://host/{key}/chat", "xai-Jk4Lm9Nq2Rs7Tv1Wx6Yz3Ab8Cd5Ef0Gh"),
    ("https://host/v1beta/{key}/", "AIzaSyD4x9Kq2Lm7Np3Rs8Tv1Wx6Yz0Ab5Cd-Ef"),
    ("https://host/{key}/v1", "ghp_4kLm9Nq2Rs7Tv1Wx6Yz3Ab8Cd5Ef0GhJk"),
    ("https://host/Bearer%20{key}/v1", "Zq8vN2kLw5Rt"),  # whatever follows Bearer
    ("https://host/v1/token={key}/", "Rt9xYp3Hd7Jf"),  # whatever follows a secret's name
    ("https://host/v1/{key}/", "aZ3kP9qLm2XvB7nR4tYw8sDf6GhJ"),  # no prefix: random letters/digits
    ("https://host/v1#{key}", "sk-proj-Hal7SECRETkey0123456789abcdef"),  # in the fragment
]


@pytest.mark.parametrize(("shape", "key"), PATH_KEYS)
def test_a_key_in_the_path_of_base_url_is_refused_masked_with_the_rule(shape, key) -> None:
    url = shape.format(key=key)
    for build in _refusals("base_url", url):
        with pytest.raises(ValueError) as caught:
            build()
        said = _everything_said(caught.value)
        assert key not in said
        message = str(caught.value)
        assert "base_url" in message and "carries a credential (rule: no key in the" in message
    masked = shape.split("{key}")[0].replace("Bearer%20", "").replace("token=", "")
    assert masked.rstrip("/#") in message and "***" in message
    place = "fragment" if "#" in shape else "path"
    assert f"no key in the {place}" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000/v1",
        "http://localhost:11434/v1/",
        "https://api.openai.com/v1",
        "https://my-lab.openai.azure.com/openai/deployments/gpt-4o-mini/",
        "http://judge.internal/api/v2/chat",
        "https://host/models/Meta-Llama-3-70B-Instruct-Turbo/v1",
        "https://host/models/meta-llama/Llama-3.1-8B-Instruct/v1",
        "https://host/Qwen2.5-7B-Instruct-AWQ/v1",
        "https://host/DeepSeek-R1-Distill-Qwen-32B/v1",
        "https://host/llama3_1_70b_instruct_fp8_dynamic/v1",
        "https://host/text-embedding-3-large-2024-05-13/v1",
        "https://host/MyCompanyGpt4oDeployment2024/v1",
        "https://api.cloudflare.com/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/ai/v1",
        "https://host/projects/123e4567-e89b-12d3-a456-426614174000/v1",
        "https://api.runpod.ai/v2/abc123xyz456/openai/v1",
        "https://host/v1#chat",
    ],
)
def test_ordinary_base_urls_are_accepted_unchanged(url) -> None:
    assert OpenAIJudgeConfig(base_url=url).endpoint == url
    assert parse_judge_config({"base_url": url}).base_url == url
