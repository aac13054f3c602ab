"""The metric registry is the one declaration the rest reads: every registered metric is in
the report schema, every graded one has bands, and every metric declared with a jackknife
interval gets one from a real suite."""

from __future__ import annotations

import json
from importlib import resources

import torch

from saedoctor.health import load_policy
from saedoctor.metrics import MetricSuite
from saedoctor.metrics.downstream import Downstream
from saedoctor.metrics.registry import (
    DENSITIES,
    GRADED,
    JACKKNIFE,
    MEASURED,
    METRICS,
    WITHOUT_SKIP,
)
from saedoctor.report.fields import GRADED as REPORT_GRADED
from saedoctor.report.fields import ROWS
from saedoctor.report.schema import registry_metric_properties
from saedoctor.sae.codes import Codes


def test_every_registered_metric_is_in_the_schema_and_the_report_rows() -> None:
    schema = json.loads((resources.files("saedoctor") / "data" / "report.schema.json")
                        .read_text())  # fmt: skip
    properties = schema["$defs"]["metrics"]["properties"]
    missing = [m.key for m in METRICS if m.key not in properties]
    assert not missing, missing
    # the shipped schema says what the registry declares (the validator uses the latter)
    assert {m.key: properties[m.key] for m in METRICS} == registry_metric_properties()
    assert [row.key for row in ROWS] == [m.key for m in METRICS]
    assert REPORT_GRADED == GRADED


def test_every_graded_metric_has_bands_in_the_bundled_policy() -> None:
    policy = load_policy()
    assert tuple(policy.metrics) == GRADED
    for key in GRADED:
        assert any(policy.metrics[key].bands.values()), key


def test_every_metric_declared_with_an_interval_gets_one() -> None:
    g = torch.Generator().manual_seed(0)
    suite, down = MetricSuite(8, 32, interval_blocks=8), Downstream(interval_blocks=8)
    for first in range(0, 32, 4):
        seq = torch.arange(first, first + 4).repeat_interleave(8)
        x = torch.randn(seq.numel(), 8, generator=g)
        codes = (torch.rand(seq.numel(), 32, generator=g) < 0.3).float()
        suite.update(x, x + 0.3 * torch.randn_like(x), Codes(codes, None, 32), seq)
        ce = torch.rand(4, 7, generator=g) + 2
        down.add_clean(ce, torch.ones(4, 7, dtype=torch.bool), first)
        for which, shift in (("sae", 0.2), ("ablated", 1.0)):
            kl = torch.rand(4, 8, generator=g) * shift
            down.add_patched(which, ce + shift * torch.rand(4, 7, generator=g), kl,
                             torch.ones(4, 7, dtype=torch.bool),
                             torch.ones(4, 8, dtype=torch.bool))  # fmt: skip
    intervals = {**suite.compute()["intervals"], **down.compute()["downstream_intervals"]}
    declared = [m.key for m in METRICS if m.interval in (JACKKNIFE, DENSITIES)]
    assert [k for k in declared if k not in intervals] == []


def test_the_suite_measures_exactly_the_registered_token_metrics() -> None:
    suite = MetricSuite(4, 8, without_skip=True)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    codes = Codes(torch.rand(16, 8, generator=torch.Generator().manual_seed(2)), None, 8)
    suite.update(x, 0.9 * x, codes, torch.arange(16) // 4, x_hat_without_skip=0.8 * x)
    measured = suite.measured_keys()
    assert set(measured) == set(MEASURED) | {k + "_without_skip" for k in WITHOUT_SKIP}
    values = suite.compute(W_dec=torch.randn(8, 4, generator=torch.Generator().manual_seed(3)))
    assert [k for k in measured if values.get(k) is None] == []
