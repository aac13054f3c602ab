"""Data-parallel diagnose under torchrun (gloo on CPU) equals a one-process run."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_sae, saved_sae

from saedoctor.distributed import World, gather_main_pass, shard_batches, world
from saedoctor.sae.site import Site

REL = 1e-9
COUNTS = ("tokens_processed", "tokens_counted", "sequences")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "saedoctor"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
            "-m", "saedoctor"]  # fmt: skip


def _diagnose(nproc: int, args: list[str], out: Path) -> dict:
    for _ in range(3):  # the free port may be taken by another job before torchrun binds it
        cmd = [*_torchrun(nproc), "diagnose", *args, "--out", str(out), "--quiet", "--json"]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        if "address already in use" not in done.stderr.lower():
            break
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _numbers(value, path=""):
    """Every number in a JSON value, by its path (lists included, element by element)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")


def _assert_same_saes(one: dict, two: dict) -> int:
    checked = 0
    for a, b in zip(one["saes"], two["saes"], strict=True):
        for key in ("metrics", "feature_density", "feature_mean_activation", "nonfinite",
                    "grading", "always_on_explanations"):  # fmt: skip
            left, right = dict(_numbers(a[key])), dict(_numbers(b[key]))
            assert left.keys() == right.keys(), key
            for path, x in left.items():
                y = right[path]
                if isinstance(x, int) and isinstance(y, int):
                    assert x == y, f"{a['name']} {key}{path}: {x} != {y}"
                else:
                    assert math.isclose(x, y, rel_tol=REL, abs_tol=1e-12), f"{key}{path}: {x} {y}"
                checked += 1
        assert a["grading"]["grade"] == b["grading"]["grade"]
    return checked


def test_two_gloo_ranks_give_the_one_process_report(tiny_llama_dir, text_corpus, tmp_path):
    saes = [
        saved_sae(tmp_path / "l0", random_sae(64, 256, site=Site(0), seed=1)),
        saved_sae(tmp_path / "l2", random_sae(64, 128, architecture="relu", site=Site(2), seed=2)),
    ]
    # 7 batches of 2 x 32 tokens: an odd count, so rank 0 gets one batch more than rank 1.
    args = ["--model", str(tiny_llama_dir), "--corpus", str(text_corpus), "--tokens", "448",
            "--context", "32", "--batch-size", "2", "--always-on-threshold", "0.3"]  # fmt: skip
    for p in saes:
        args += ["--sae", str(p)]
    one = _diagnose(1, args, tmp_path / "r1.json")
    two = _diagnose(2, args, tmp_path / "r2.json")
    for key in COUNTS:
        assert one["run"][key] == two["run"][key], key
    assert one["run"]["sequences"] == 14
    assert _assert_same_saes(one, two) > 500
    assert "loss_recovered" in two["saes"][0]["metrics"]
    assert not list(tmp_path.glob("*.partial.safetensors*"))  # no state left by any rank


def test_shard_batches_is_round_robin_and_covers_everything():
    batches = list(range(11))
    shards = [list(shard_batches(batches, World(r, 3))) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shards, [])) == batches


def test_one_process_is_the_plain_path(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert world() == World(0, 1, 0)
    totals = {"tokens_processed": 5}
    assert gather_main_pass([], totals) is totals


def test_bad_torchrun_environment_is_one_line(monkeypatch):
    from saedoctor.errors import InputError

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="RANK=3"):
        world()


def test_torchrun_refuses_resume_in_one_line(tiny_llama_dir, text_corpus, tmp_path):
    sae = saved_sae(tmp_path / "l0", random_sae(64, 128, site=Site(0)))
    cmd = [*_torchrun(2), "diagnose", "--model", str(tiny_llama_dir), "--sae", str(sae),
           "--corpus", str(text_corpus), "--tokens", "128", "--resume", "--quiet",
           "--out", str(tmp_path / "r.json")]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--resume: a run under torchrun cannot be resumed" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_device_map_load_gives_the_same_metrics(tiny_llama_dir, text_corpus, tmp_path):
    from saedoctor.activations.model import load_model, site_device
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    split = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
             "model.layers.2": "cpu", "model.layers.3": "cpu", "model.norm": "cpu",
             "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip
    loaded = load_model(str(tiny_llama_dir), device_map=split)
    assert site_device(loaded.model, 2) == torch.device("cpu")
    sae = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(2), seed=3))
    base = dict(model=str(tiny_llama_dir), saes=[str(sae)], corpus=str(text_corpus),
                tokens=256, context=32, batch_size=4, quiet=True)  # fmt: skip
    plain = diagnose(DiagnoseOptions(**base))["saes"][0]["metrics"]
    mapped = diagnose(DiagnoseOptions(**base, device_map=split))["saes"][0]["metrics"]
    for key in ("l0", "variance_explained", "loss_recovered", "kl_score", "absorption"):
        assert mapped[key] == pytest.approx(plain[key], rel=1e-6), key


def test_quantize_without_bitsandbytes_is_one_line(tiny_llama_dir, monkeypatch):
    import importlib.util

    from saedoctor.activations.model import load_model
    from saedoctor.errors import InputError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(InputError, match="needs bitsandbytes"):
        load_model(str(tiny_llama_dir), quantize="4bit")
    with pytest.raises(InputError, match="--quantize '2bit'"):
        load_model(str(tiny_llama_dir), quantize="2bit")
