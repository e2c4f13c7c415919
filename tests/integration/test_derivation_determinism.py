"""A recipe gives the same questionnaire whatever the threads and CPU code paths: the same
trait ids, texts, groups, cluster sizes and examples, and its 4-decimal figures within one unit.

Two child processes derive traits from the same real statements, each from scratch (no
embedding cache): one with every thread pool at one thread, the other with two threads and
other CPU kernels (torch's scalar kernels instead of AVX2/AVX-512, MKL and oneDNN held to
older instruction sets, another OpenBLAS core type), as a different machine would run them.
The full GPT-5 file is checked the same way by ``bench/derive_traits.py --processes``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hal_core.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GAMES = 120  # about 590 statements: two seeded runs take seconds
SEEDS = "0,1"

CHILD = """
import hashlib, json, sys
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info

from hal_core.derivation import DerivationRecipe, collect_statements, derive_questionnaire
from hal_core.embedding import embed_texts
from hal_core.tables import read_table

path, games, seeds, output = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
statements = collect_statements(read_table(path).head(games))
recipe = DerivationRecipe(seeds=[int(seed) for seed in seeds.split(",")])
run = derive_questionnaire(statements, recipe, name="determinism", derivation={"games": games})
texts = run.statements["text"].tolist()
text = run.derivation.questionnaire.to_json()
output.write_text(text, encoding="utf-8")
float32 = np.asarray(embed_texts(texts[:100]), dtype=np.float32)
print(json.dumps({
    "sha256": hashlib.sha256(text.encode()).hexdigest(),
    "version": run.derivation.questionnaire.version,
    "n_traits": len(run.derivation.questionnaire.traits),
    "float32_sha256": hashlib.sha256(float32.tobytes()).hexdigest(),
    "torch_threads": torch.get_num_threads(),
    "torch_capability": torch.backends.cpu.get_cpu_capability(),
    "blas": sorted({str(pool.get("architecture")) for pool in threadpool_info()
                    if pool["user_api"] == "blas"}),
}))
"""

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
OTHER_MACHINE = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OPENBLAS_NUM_THREADS": "2",
    "NUMBA_NUM_THREADS": "2",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OPENBLAS_CORETYPE": "Prescott",
}


def start_child(statements: Path, output: Path, settings: dict[str, str]) -> subprocess.Popen:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ONE_THREAD and key not in OTHER_MACHINE
    }
    environment |= {
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), environment.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(statements), str(GAMES), SEEDS, str(output)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=output.parent,
    )


# The questionnaire's floats (a trait's cohesion, the noise fraction) are written with 4
# decimals: another BLAS kernel moves a mean of cosines by ~1e-16, which changes its 4th decimal
# only if it sits on a rounding boundary, and then by one unit. Ids, texts, sizes and every
# other value must be equal.
FOUR_DECIMALS = 1e-4 + 1e-12  # one unit of the 4th decimal, and that decimal's representation


def same_json(one: object, other: object, tolerance: float = FOUR_DECIMALS) -> bool:
    """Equal JSON values, floats within ``tolerance`` (everything else exactly)."""
    if isinstance(one, float) or isinstance(other, float):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (one, other))
        return numbers and abs(one - other) <= tolerance
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(
            same_json(one[k], other[k], tolerance) for k in one
        )
    if isinstance(one, list) and isinstance(other, list):
        return len(one) == len(other) and all(
            same_json(a, b, tolerance) for a, b in zip(one, other, strict=True)
        )
    return type(one) is type(other) and one == other


def finish(child: subprocess.Popen) -> dict:
    stdout, stderr = child.communicate(timeout=900)
    assert child.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_two_processes_with_other_threads_and_kernels_write_the_same_questionnaire(
    data_dir, tmp_path
) -> None:
    statements = data_dir / "turing" / "statements_gpt-5.csv"
    outputs = [tmp_path / "one_thread.json", tmp_path / "other_machine.json"]
    children = [
        start_child(statements, outputs[0], ONE_THREAD),
        start_child(statements, outputs[1], OTHER_MACHINE),
    ]
    one, other = (finish(child) for child in children)

    # the second process really ran other code: threads, torch kernels, BLAS kernels
    assert (one["torch_threads"], other["torch_threads"]) == (1, 2)
    assert other["torch_capability"] == "DEFAULT"
    assert other["blas"] != one["blas"]
    if one["torch_capability"] != "DEFAULT":
        assert one["float32_sha256"] != other["float32_sha256"]  # float32 vectors move

    first, second = (json.loads(path.read_text(encoding="utf-8")) for path in outputs)
    assert same_json(first, second)
    assert not same_json(first, {**second, "name": "other"})  # the comparison can fail ...
    moved = json.loads(outputs[1].read_text(encoding="utf-8"))
    moved["traits"][0]["provenance"]["cohesion"] += 2e-4
    assert not same_json(first, moved)  # ... on a figure that moved by two units too
    assert one["version"] == other["version"]  # a hash of ids, texts and scale: no floats
    assert one["n_traits"] >= 5
