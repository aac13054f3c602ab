"""saedoctor's circuit-tracer transcoder sets against circuit-tracer 0.5.0 itself, both ways.

circuit-tracer lives in its own venv (benchmarks/_circuit_tracer_env.py), built from PyPI on
first use (about 1-2 minutes, 1.6 GB); without PyPI the test skips (fails under CI)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import skip_or_fail_in_ci
from safetensors.torch import save_file

from saedoctor.sae.loaders import load_dictionaries, save_circuit_tracer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _circuit_tracer_env as ct_env  # noqa: E402
import circuit_tracer_agreement as agreement  # noqa: E402

N_LAYERS, D_MODEL, D_T, ROWS = 3, 32, 64, 200


@pytest.fixture(scope="module")
def peer_env() -> Path:
    try:
        return ct_env.ensure_env()
    except RuntimeError as exc:  # pip could not reach the package index, or a build failed
        skip_or_fail_in_ci(f"circuit-tracer's venv could not be built: {str(exc)[-600:]}")


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, dict]:
    x = agreement.lm_like_inputs(N_LAYERS, ROWS, D_MODEL, seed=5)
    save_file(x, str(tmp_path / "inputs.safetensors"))
    return tmp_path / "inputs.safetensors", x


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(agreement.OURS_VARIANTS))
def test_saedoctor_writes_circuit_tracer_reads(peer_env: Path, tmp_path: Path, inputs: tuple,
                                               variant: str) -> None:  # fmt: skip
    arch, skip, apply_b_dec = agreement.OURS_VARIANTS[variant]
    dicts = agreement.random_transcoders(arch, N_LAYERS, D_MODEL, D_T, skip=skip,
                                         apply_b_dec=apply_b_dec, seed=1)  # fmt: skip
    directory = save_circuit_tracer(dicts, tmp_path / "set")
    theirs = agreement.peer_outputs(directory, inputs[0], tmp_path)
    result = agreement.compare_outputs(dicts, inputs[1], theirs)
    # A feature may fire on one side only where its pre-activation is within rounding of the
    # threshold (the b_dec fold reorders the sum); the max_rel bound keeps such flips tiny.
    assert result["max_rel"] <= agreement.TOLERANCE, result["tensors"]
    # Neither all-dead nor all-firing: the comparison exercises the activation.
    assert all(0 < l0 < D_T for l0 in result["mean_l0"]), result["mean_l0"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(agreement.THEIRS_VARIANTS))
def test_circuit_tracer_writes_saedoctor_reads(peer_env: Path, tmp_path: Path, inputs: tuple,
                                               variant: str) -> None:  # fmt: skip
    directory = tmp_path / "set"
    ct_env.run_worker(["write-plt", str(directory), "--n-layers", str(N_LAYERS), "--d-model",
                       str(D_MODEL), "--d-transcoder", str(D_T), "--seed", "3",
                       *agreement.THEIRS_VARIANTS[variant]])  # fmt: skip
    dicts = load_dictionaries(directory)
    assert len(dicts) == N_LAYERS
    assert agreement.weights_equal(dicts, directory) == {"exact": True, "mismatched": []}
    theirs = agreement.peer_outputs(directory, inputs[0], tmp_path)
    result = agreement.compare_outputs(dicts, inputs[1], theirs)
    assert result["max_rel"] <= agreement.TOLERANCE, result["tensors"]
