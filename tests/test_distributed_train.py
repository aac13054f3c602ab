"""`saedoctor train` under torchrun (gloo on CPU): data parallel and --distribute-layers train
the SAEs a one-process run trains, and the checkpoint stays the one-process format."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saedoctor.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from test_distributed import _env, _torchrun


def _train(nproc: int, tiny_llama_dir: Path, corpus: Path, out: Path, *extra: str):
    args = ["train", "--model", str(tiny_llama_dir), "--dataset", str(corpus), "--layer", "0",
            "--layer", "1", "--tokens", "3072", "--context", "32", "--batch-size", "4",
            "--expansion-factor", "2", "--top-k", "8", "--seed", "3", "--monitor-every", "4",
            "--set", "shuffle_tokens=1024", "--set", "dead_feature_threshold=256",
            "--out", str(out), "--quiet", "--json", *extra]  # fmt: skip
    for _ in range(3):  # the free port may be taken by another job before torchrun binds it
        done = subprocess.run([*_torchrun(nproc), *args], env=_env(), capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        if "address already in use" not in done.stderr.lower():
            break
    return done


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    summary = json.loads((out / "train.json").read_text())
    return {name: load_file(Path(entry["path"]) / "sae_weights.safetensors")
            for name, entry in summary["saes"].items()}  # fmt: skip


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def one_process(tiny_llama_dir, tmp_path_factory):
    """The reference: one process, the same data, seed and batch."""
    from conftest import TINY_TEXT

    root = tmp_path_factory.mktemp("one")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{t} Document {i} talks about item "
                                                  f"{i * 7 % 13}."}) + "\n"
                              for i, t in enumerate(TINY_TEXT * 12)))  # fmt: skip
    cases = {}
    for arch in ("topk", "batchtopk"):
        out = root / arch
        done = _train(1, tiny_llama_dir, corpus, out, "--architecture", arch,
                      "--diversity-loss-weight", "0.01")  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        cases[arch] = out
    return corpus, cases


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_two_data_parallel_ranks_train_the_one_process_saes(arch, one_process, tiny_llama_dir,
                                                            tmp_path):  # fmt: skip
    corpus, reference = one_process
    done = _train(2, tiny_llama_dir, corpus, tmp_path / "two", "--architecture", arch,
                  "--diversity-loss-weight", "0.01")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _weights(reference[arch]), _weights(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 2
    for name in one:
        for key, value in one[name].items():
            # each rank's half-batch mean, averaged: the same gradient up to summation order
            assert _max_rel(two[name][key], value) < 1e-4, (name, key)
    s1 = json.loads((reference[arch] / "train.json").read_text())
    s2 = json.loads((tmp_path / "two" / "train.json").read_text())
    assert s2["tokens"] == s1["tokens"] and s2["steps"] == s1["steps"]
    assert s2["ranks"] == {"world_size": 2, "mode": "data"}
    for name in one:  # rank 0's monitor saw both ranks' tokens
        a, b = s1["saes"][name]["final"], s2["saes"][name]["final"]
        assert b["window_tokens"] == a["window_tokens"]
        assert b["l0"] == pytest.approx(a["l0"], rel=1e-3)
        assert b["variance_explained"] == pytest.approx(a["variance_explained"], abs=1e-3)


def test_distribute_layers_trains_the_same_saes(one_process, tiny_llama_dir, tmp_path):
    corpus, reference = one_process
    out = tmp_path / "layers"
    done = _train(2, tiny_llama_dir, corpus, out, "--architecture", "topk",
                  "--diversity-loss-weight", "0.01", "--distribute-layers",
                  "--checkpoint-every", "2", "--keep-checkpoint")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _weights(reference["topk"]), _weights(out)
    for name in one:  # each SAE sees the whole micro-batch on its own rank: same arithmetic
        for key, value in one[name].items():
            assert _max_rel(two[name][key], value) < 1e-5, (name, key)
    summary = json.loads((out / "train.json").read_text())
    assert summary["ranks"] == {"world_size": 2, "mode": "layers"}
    assert all(entry["final"]["window_tokens"] > 0 for entry in summary["saes"].values())
    # the checkpoint is the one-process format, every SAE gathered onto rank 0
    state = load_checkpoint(out / CHECKPOINT_FILE)
    assert set(state["saes"]) == set(one)
    for name, saved in state["saes"].items():
        assert saved["params"]["W_dec"].shape == one[name]["W_dec"].shape
    # ... so one process resumes it: the finished run's state gives the same SAEs again
    for name in two:
        (Path(summary["saes"][name]["path"]) / "sae_weights.safetensors").unlink()
    resumed = subprocess.run([*_torchrun(1), "train", "--resume", "--out", str(out), "--quiet"],
                             env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _weights(out)
    for name in two:
        for key, value in two[name].items():
            assert torch.equal(again[name][key], value), (name, key)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--distribute-layers", "--layer", "0"], "at least one SAE per rank"),
        (["--batch-size", "3", "--context", "33"], "split evenly over 2 ranks"),
    ],
)
def test_a_split_that_cannot_work_is_one_line(extra, needle, tiny_llama_dir, text_corpus,
                                              tmp_path):  # fmt: skip
    args = ["train", "--model", str(tiny_llama_dir), "--dataset", str(text_corpus),
            "--tokens", "2048", "--quiet", "--out", str(tmp_path / "x"), *extra]  # fmt: skip
    if "--layer" not in extra:
        args += ["--layer", "0", "--layer", "1"]
    done = subprocess.run([*_torchrun(2), *args], env=_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert needle in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("saedoctor: error:")]
    assert lines and needle in lines[0]
