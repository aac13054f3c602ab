"""The dense-latent taxonomy (arXiv 2506.15679): evidence from planted weights and activations,
each class found on a feature built to be it, and the always-on rule following the class.

Every tensor is small and random (seeded); every density, correlation and share written here
is invented for the test. The per-token statistics the accumulator would give are computed
here with plain Python loops, and the geometry is checked against float64 references built
from the planted construction, not from the code under test.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

from saedoctor.health import diagnose_entry, load_policy
from saedoctor.health import taxonomy as tx
from saedoctor.metrics import dense_latents as dl
from saedoctor.metrics.dense_latents import FiringStats, dense_latent_evidence
from test_health_entries import make_entry

D, D_SAE, VOCAB, NULL_DIM = 32, 24, 50, 4
SEQS, LENGTH = 64, 8
TOKEN_IDS = 20  # token ids drawn from 0..19 (invented)
# Planted features (ids invented):
FIRST, POSITION, PAIR_A, PAIR_B, NULL, ENC_MEAN, DEC_MEAN, PC0, PC2, TOKENS, GENERIC = (
    1, 2, 3, 7, 5, 9, 10, 11, 12, 13, 14)  # fmt: skip
CHOSEN = [FIRST, POSITION, PAIR_A, NULL, ENC_MEAN, DEC_MEAN, PC0, PC2, TOKENS, GENERIC]


# --- naive references for the accumulator's per-token statistics --------------------------


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    vx = sum((x - mx) ** 2 for x in xs)
    vy = sum((y - my) ** 2 for y in ys)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan


def firing_stats(acts: list[list[float]], positions: list[int], tokens: list[int]) -> FiringStats:
    corr, first, top5, sample = [], [], [], []
    for column in acts:
        fired = [i for i, a in enumerate(column) if a > 0]
        corr.append(pearson(column, [float(p) for p in positions]))
        first.append(sum(positions[i] == 0 for i in fired) / len(fired) if fired else math.nan)
        kept = [tokens[i] for i in fired[:64]]  # TOKEN_SKETCH firings
        counts = Counter(kept).most_common(5)
        top5.append(sum(c for _, c in counts) / len(kept) if kept else math.nan)
        sample.append(len(kept))
    return FiringStats(
        torch.tensor(corr, dtype=torch.float64),
        torch.tensor(first, dtype=torch.float64),
        torch.tensor(top5, dtype=torch.float64),
        torch.tensor(sample),
    )


# --- the planted dictionary --------------------------------------------------------------


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=gen))
    return q


def planted() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    basis = orthonormal(D, D, gen)
    seen, unseen = basis[:, : D - NULL_DIM], basis[:, D - NULL_DIM :]  # W_U reads only `seen`
    W_U = (seen @ torch.randn(D - NULL_DIM, VOCAB, dtype=torch.float64, generator=gen)).float()
    pcs = orthonormal(D, D, gen)
    eig = torch.tensor([10.0, 6.0, 4.0, 3.0, 2.5] + [1.0] * (D - 5), dtype=torch.float64)
    cov = pcs @ torch.diag(eig) @ pcs.T
    mean = torch.randn(D, dtype=torch.float64, generator=gen)
    W_enc = torch.randn(D, D_SAE, dtype=torch.float64, generator=gen)
    W_dec = torch.randn(D_SAE, D, dtype=torch.float64, generator=gen)
    W_enc[:, PAIR_B] = -1.5 * W_enc[:, PAIR_A]
    W_dec[NULL] = unseen @ torch.randn(NULL_DIM, dtype=torch.float64, generator=gen)
    W_enc[:, ENC_MEAN] = 3 * mean
    W_dec[DEC_MEAN] = -0.5 * mean  # |cos| counts: minus the mean is still the mean's line
    W_dec[PC0], W_dec[PC2] = 2 * pcs[:, 0], pcs[:, 2]
    density = torch.rand(D_SAE, dtype=torch.float64, generator=gen) * 0.3
    density[PAIR_A], density[PAIR_B] = 0.6, 0.4  # invented densities of the antipodal pair
    return {"W_U": W_U, "seen": seen, "unseen": unseen, "pcs": pcs, "cov": cov, "mean": mean,
            "W_enc": W_enc.float(), "W_dec": W_dec.float(), "density": density}  # fmt: skip


def activations(gen: torch.Generator) -> tuple[list[list[float]], list[int], list[int]]:
    """Per chosen feature, its activation on each token of SEQS sequences of LENGTH."""
    positions = [p for _ in range(SEQS) for p in range(LENGTH)]
    tokens = torch.randint(0, TOKEN_IDS, (len(positions),), generator=gen).tolist()
    noise = torch.rand(len(CHOSEN), len(positions), generator=gen).tolist()
    acts = []
    for f, row in zip(CHOSEN, noise, strict=True):
        if f == FIRST:
            acts.append([2.0 if p == 0 else 0.0 for p in positions])
        elif f == POSITION:
            acts.append([0.3 * (p + 1) + 0.01 * r for p, r in zip(positions, row, strict=True)])
        else:  # fires on about half the tokens, unrelated to position
            acts.append([r - 0.5 if r > 0.5 else 0.0 for r in row])
    for i in range(len(positions)):  # TOKENS fires only on three token ids (ids invented)
        acts[CHOSEN.index(TOKENS)][i] = 1.0 if tokens[i] in (4, 11, 17) else 0.0
    return acts, positions, tokens


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    w = planted()
    acts, positions, tokens = activations(torch.Generator().manual_seed(1))
    w["firing"] = firing_stats(acts, positions, tokens)
    w["evidence"] = {
        e.feature: e
        for e in dense_latent_evidence(
            CHOSEN, w["density"], w["firing"], W_dec=w["W_dec"], target_mean=w["mean"],
            W_enc=w["W_enc"], input_mean=w["mean"], target_cov=w["cov"],
            unembedding=dl.UnembeddingGram.of(w["W_U"]),
        )
    }  # fmt: skip
    return w


# --- evidence ----------------------------------------------------------------------------


def test_evidence_is_one_record_per_feature_in_order(world) -> None:
    assert list(world["evidence"]) == CHOSEN
    e = world["evidence"][FIRST]
    assert e.first_token_share == 1.0 and e.token_sample == SEQS
    assert e.density == pytest.approx(float(world["density"][FIRST]))
    assert e.position_corr == pytest.approx(float(world["firing"].position_corr[0]))


def test_null_space_share_matches_an_independent_projection(world) -> None:
    unseen = world["unseen"]
    W_dec = world["W_dec"].double()
    for f in CHOSEN:
        row = W_dec[f]
        reference = float((unseen.T @ row).square().sum() / row.square().sum())
        assert world["evidence"][f].null_space_share == pytest.approx(reference, abs=1e-6)
    assert world["evidence"][NULL].null_space_share == pytest.approx(1.0, abs=1e-6)
    basis = dl.null_space_basis(dl.UnembeddingGram.of(world["W_U"]))
    assert basis.shape == (D, NULL_DIM)
    assert torch.allclose(basis @ basis.T, unseen @ unseen.T, atol=1e-6)


def test_null_space_of_a_short_vocabulary_and_chunked_gram(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(2)
    short = torch.randn(D, 20, dtype=torch.float64, generator=gen)  # rank 20 < d_model
    monkeypatch.setattr(dl, "_COLUMN_CHUNK", 3)  # the Gram matrix summed over 7 blocks
    basis = dl.null_space_basis(dl.UnembeddingGram.of(short))
    assert basis.shape == (D, D - 20)
    assert float((short.T @ basis).abs().max()) < 1e-9


def test_null_space_share_undefined_off_the_residual_stream(world) -> None:
    # A W_U of another width: this dictionary does not write d_model-wide vectors.
    other = torch.randn(D + 3, VOCAB)
    (e,) = dense_latent_evidence(
        [NULL], world["density"], _one(world["firing"], 3),
        W_dec=world["W_dec"], target_mean=world["mean"],
        unembedding=dl.UnembeddingGram.of(other),
    )  # fmt: skip
    assert e.null_space_share is None
    assert e.antipodal_partner is None and e.pc_cosine is None and e.mean_cosine_of == "decoder"


def _one(firing: FiringStats, j: int) -> FiringStats:
    return FiringStats(*(t[j : j + 1] for t in vars(firing).values()))


def test_principal_component_alignment(world) -> None:
    e0, e2 = world["evidence"][PC0], world["evidence"][PC2]
    assert (e0.pc_index, e0.pc_cosine) == (0, pytest.approx(1.0, abs=1e-6))
    assert (e2.pc_index, e2.pc_cosine) == (2, pytest.approx(1.0, abs=1e-6))
    # A generic row: its largest |cos| with the planted top five, in float64 loops.
    row = world["W_dec"][GENERIC].double()
    naive = max(abs(float(row @ world["pcs"][:, i])) / float(row.norm()) for i in range(5))
    assert world["evidence"][GENERIC].pc_cosine == pytest.approx(naive, abs=1e-6)


def test_antipodal_partner_and_density_sum(world) -> None:
    e = world["evidence"][PAIR_A]
    assert (e.antipodal_partner, e.antipodal_cosine) == (PAIR_B, pytest.approx(-1.0, abs=1e-6))
    assert e.density_sum == pytest.approx(1.0)


def test_antipodal_partners_chunked_equal_a_naive_loop(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(3)
    W_enc = torch.randn(6, 23, dtype=torch.float64, generator=gen)
    W_enc[:, 20] = W_enc[:, 4]  # 4 and 20 tie as the most opposite of 9, in different chunks
    W_enc[:, 9] = -W_enc[:, 4]
    monkeypatch.setattr(dl, "_COLUMN_CHUNK", 5)
    feats = torch.tensor([0, 4, 9, 22])
    partner, cos = dl.antipodal_partners(W_enc, feats)
    for f, p, c in zip(feats.tolist(), partner.tolist(), cos.tolist(), strict=True):
        best = (math.inf, -1)
        for j in range(W_enc.shape[1]):
            if j != f:
                a, b = W_enc[:, f], W_enc[:, j]
                best = min(best, (float(a @ b / (a.norm() * b.norm())), j))
        assert p == best[1] and c == pytest.approx(best[0], abs=1e-12)
    assert partner.tolist()[2] == 4  # the tie goes to the lower id


def test_mean_cosine_reports_the_larger_row(world) -> None:
    enc, dec = world["evidence"][ENC_MEAN], world["evidence"][DEC_MEAN]
    assert (enc.mean_cosine_of, enc.mean_cosine) == ("encoder", pytest.approx(1.0, abs=1e-6))
    assert (dec.mean_cosine_of, dec.mean_cosine) == ("decoder", pytest.approx(1.0, abs=1e-6))
    row, mean = world["W_dec"][GENERIC].double(), world["mean"]
    col = world["W_enc"][:, GENERIC].double()
    naive = max(abs(float(v @ mean)) / float(v.norm() * mean.norm()) for v in (row, col))
    assert world["evidence"][GENERIC].mean_cosine == pytest.approx(naive, abs=1e-6)


def test_as_json_matches_the_report_entry(world) -> None:
    e = world["evidence"][FIRST]
    out = e.as_json("first_token")
    assert (out["feature"], out["density"], out["class"]) == (FIRST, e.density, "first_token")
    keys = {"position_corr", "first_token_share", "null_space_share", "pc_cosine", "pc_index",
            "antipodal_partner", "antipodal_cosine", "density_sum", "token_top5_share",
            "token_sample", "mean_cosine"}  # fmt: skip
    assert keys <= set(out["evidence"])
    assert out["evidence"]["mean_cosine_of"] in ("encoder", "decoder")
    # A constant activation has no correlation: NaN is reported as None, never as NaN.
    flat = FiringStats(*(torch.tensor([math.nan]) for _ in range(3)), torch.tensor([0]))
    (g,) = dense_latent_evidence([0], world["density"], flat, W_dec=world["W_dec"],
                                 target_mean=world["mean"])  # fmt: skip
    assert g.position_corr is None and g.as_json()["evidence"]["token_top5_share"] is None


# --- classes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feature", "expected"),
    [(FIRST, "first_token"), (POSITION, "position"), (PAIR_A, "antipodal_pair"),
     (NULL, "null_space"), (ENC_MEAN, "mean_direction"), (DEC_MEAN, "mean_direction"),
     (PC0, "principal_component"), (PC2, "principal_component"), (TOKENS, "token_set"),
     (GENERIC, None)],
)  # fmt: skip
def test_each_planted_feature_gets_its_class(world, feature: int, expected: str | None) -> None:
    e = world["evidence"][feature]
    assert tx.classify(e) == expected
    # the report's form of the evidence, read back from JSON, gives the same class
    assert tx.classify(e.as_json()["evidence"]) == expected
    assert tx.dense_latent_entry(e)["class"] == expected


def test_first_token_wins_over_position_by_precedence(world) -> None:
    e = world["evidence"][FIRST]
    assert tx.position(e)  # an indicator of position 0 also correlates with position (-0.58)
    assert e.position_corr == pytest.approx(-math.sqrt(1 / 3), abs=1e-9)
    assert tx.classify(e) == "first_token"


def test_antipodal_pair_needs_densities_summing_to_one(world) -> None:
    density = world["density"].clone()
    density[PAIR_A], density[PAIR_B] = 0.9, 0.9  # invented: both fire on 90% of tokens
    j = CHOSEN.index(PAIR_A)
    (e,) = dense_latent_evidence([PAIR_A], density, _one(world["firing"], j),
                                 W_dec=world["W_dec"], target_mean=world["mean"],
                                 W_enc=world["W_enc"], input_mean=world["mean"])  # fmt: skip
    assert e.antipodal_partner == PAIR_B and e.density_sum == pytest.approx(1.8)
    assert not tx.antipodal_pair(e) and tx.classify(e) is None


BASE = {
    "position_corr": 0.1,
    "first_token_share": 0.2,
    "null_space_share": 0.1,
    "pc_cosine": 0.3,
    "pc_index": 0,
    "antipodal_partner": 4,
    "antipodal_cosine": -0.2,
    "density_sum": 1.0,
    "token_top5_share": 0.3,
    "token_sample": 64,
    "mean_cosine": 0.2,
    "mean_cosine_of": "decoder",
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [({}, None),
     ({"first_token_share": 0.9}, None), ({"first_token_share": 0.91}, "first_token"),
     ({"position_corr": -0.5}, None), ({"position_corr": -0.51}, "position"),
     ({"antipodal_cosine": -0.95, "density_sum": 1.09}, "antipodal_pair"),
     ({"antipodal_cosine": -0.95, "density_sum": 1.11}, None),
     ({"antipodal_cosine": -0.9, "density_sum": 1.0}, None),
     ({"antipodal_cosine": -0.95, "antipodal_partner": None}, None),
     ({"null_space_share": 0.5}, None), ({"null_space_share": 0.51}, "null_space"),
     ({"mean_cosine": 0.9}, None), ({"mean_cosine": 0.91}, "mean_direction"),
     ({"pc_cosine": 0.91}, "principal_component"),
     ({"token_top5_share": 0.81}, "token_set"),
     ({"token_top5_share": 0.95, "token_sample": 19}, None),
     ({"token_top5_share": None, "mean_cosine": None, "position_corr": None}, None),
     ({"position_corr": 0.9, "null_space_share": 0.9, "mean_cosine": 0.99}, "position"),
     ({"null_space_share": 0.9, "mean_cosine": 0.99, "pc_cosine": 0.99}, "null_space"),
     ({"mean_cosine": 0.99, "pc_cosine": 0.99, "token_top5_share": 0.99}, "mean_direction")],
)  # fmt: skip
def test_thresholds_and_precedence(change: dict[str, Any], expected: str | None) -> None:
    assert tx.classify({**BASE, **change}) == expected


def test_consequences() -> None:
    assert tx.consequence("mean_direction") == tx.FIX and tx.consequence(None) == tx.FIX
    for name in ("first_token", "position", "antipodal_pair", "null_space"):
        assert tx.consequence(name) == tx.EXCLUDE
    assert tx.consequence("principal_component") == tx.consequence("token_set") == tx.NOTE
    assert [c.name for c in tx.CLASSES] == ["first_token", "position", "antipodal_pair",
        "null_space", "mean_direction", "principal_component", "token_set"]  # fmt: skip


# --- the always-on rule ------------------------------------------------------------------

POLICY = load_policy()
RUN = {"corpus": "python-docs@test", "options": {"always_on_threshold": 0.8}}


def always_on_diagnosis(entry: dict[str, Any]) -> dict[str, Any]:
    return {d["id"]: d for d in diagnose_entry(entry, POLICY, RUN)}["always_on"]


def latent(feature: int, latent_class: str | None, **numbers: Any) -> dict[str, Any]:
    return {"feature": feature, "density": 0.95, "class": latent_class,
            "evidence": {**BASE, **numbers}}  # fmt: skip


def test_mean_direction_class_prescribes_b_dec_at_the_mean() -> None:
    entry = make_entry(always_on_count=2, always_on_features=[40, 41])
    entry["dense_latents"] = [latent(40, "mean_direction", mean_cosine=0.97),
                              latent(41, "position", position_corr=0.83)]  # fmt: skip
    d = always_on_diagnosis(entry)
    p = {x["field"]: x for x in d["prescriptions"]}
    assert p["b_dec_init"]["new"] == "mean" and "mean direction" in p["b_dec_init"]["why"]
    evidence = " | ".join(d["evidence"])
    assert "feature 40: class mean_direction (|cosine| 0.97 of the decoder row" in evidence
    assert "feature 41: class position (correlation 0.83 with token position)" in evidence
    assert "learning the mean activation" in d["explanation"]
    assert "41 (position)" in d["explanation"] and d["severity"] == "warning"


def test_keep_classes_prescribe_no_retraining() -> None:
    entry = make_entry(always_on_count=2, always_on_features=[40, 41])
    entry["dense_latents"] = [
        latent(40, "position", position_corr=-0.7),
        latent(41, "null_space", null_space_share=0.93),
        latent(42, "mean_direction", mean_cosine=0.99),
    ]  # dense, not always-on
    d = always_on_diagnosis(entry)
    assert d["prescriptions"] == [] and d["severity"] == "info"
    assert "exclude them from circuit graphs" in d["explanation"]
    assert "do not retrain" in d["explanation"] and "diversity loss" not in d["explanation"]
    evidence = " | ".join(d["evidence"])
    assert "feature 40: class position (correlation -0.70" in evidence
    assert "feature 41: class null_space (93.0% of the decoder norm²" in evidence
    assert "42" not in evidence


def test_one_unclassified_feature_keeps_todays_prescription() -> None:
    entry = make_entry(always_on_count=2, always_on_features=[40, 41])
    entry["dense_latents"] = [latent(40, "position", position_corr=0.7), latent(41, None)]
    d = always_on_diagnosis(entry)
    assert [x["field"] for x in d["prescriptions"]] == ["b_dec_init"]
    assert "feature 41: no dense-latent class fits its evidence" in " | ".join(d["evidence"])
    # an always-on feature the entry does not name cannot be judged a keep-class either
    unnamed = make_entry(always_on_count=3, always_on_features=[40, 41])
    unnamed["dense_latents"] = [latent(40, "position"), latent(41, "null_space")]
    assert always_on_diagnosis(unnamed)["prescriptions"] != []


def test_unclassified_entry_is_classified_from_its_evidence() -> None:
    entry = make_entry(always_on_count=1, always_on_features=[40])
    entry["dense_latents"] = [{"feature": 40, "density": 0.97,
                               "evidence": {**BASE, "null_space_share": 0.8}}]  # fmt: skip
    d = always_on_diagnosis(entry)
    assert d["prescriptions"] == [] and "class null_space" in " | ".join(d["evidence"])


def test_dense_latents_of_other_features_change_nothing() -> None:
    base = make_entry(always_on_count=2, always_on_features=[40, 41])
    other = make_entry(always_on_count=2, always_on_features=[40, 41])
    other["dense_latents"] = [latent(7, "position", position_corr=0.9)]
    assert always_on_diagnosis(other) == always_on_diagnosis(base)


def test_a_class_this_version_does_not_know_is_unclassified() -> None:
    entry = make_entry(always_on_count=1, always_on_features=[40])
    entry["dense_latents"] = [latent(40, "context_binding")]  # a class name from the future
    d = always_on_diagnosis(entry)
    assert [x["field"] for x in d["prescriptions"]] == ["b_dec_init"]
    assert "feature 40: no dense-latent class fits its evidence" in " | ".join(d["evidence"])


def test_no_features_no_evidence(world) -> None:
    empty = FiringStats(*(torch.zeros(0) for _ in range(4)))
    assert dense_latent_evidence([], world["density"], empty, W_dec=world["W_dec"],
                                 target_mean=world["mean"],
                                 unembedding=dl.UnembeddingGram.of(world["W_U"])) == []  # fmt: skip


def test_the_report_schema_names_exactly_the_registered_classes() -> None:
    import json
    from importlib import resources

    from saedoctor.health.taxonomy import CLASSES

    schema = json.loads((resources.files("saedoctor") / "data" / "report.schema.json").read_text())
    assert schema["$defs"]["dense_class"]["enum"] == [c.name for c in CLASSES] + [None]
