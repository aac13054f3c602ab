"""Every reported metric declared once: its key, label, how it is written, which direction
is better, whether it is graded, and how its interval is made. The report's rows
(report/fields.py) and the grading policy's metrics (health/policy.py) read this table;
a new metric is its accumulator plus one line here (and a band row if graded)."""

from __future__ import annotations

from dataclasses import dataclass

# How a metric's interval is made (metrics/intervals.py, metrics/downstream.py).
JACKKNIFE = "jackknife"  # delete-one-block jackknife over sequence blocks
DENSITIES = "densities"  # a count of thresholded densities: from the density intervals
WEIGHTS = "none: computed from the weights"  # no sampling, no interval
NO_INTERVAL = "none"


@dataclass(frozen=True)
class MetricDecl:
    key: str
    label: str
    fmt: str  # "int", "count", "f2", "f4", "g4", "pct", "ids"
    better: str | None = None  # "higher", "lower", or None (neither: read against a band)
    graded: bool = False
    interval: str = NO_INTERVAL
    # MetricSuite measures it from tokens: None (not measured) when no token was seen
    from_tokens: bool = False
    # also measured on a transcoder's dictionary alone, as `<key>_without_skip`
    without_skip: bool = False
    bounds: tuple[float | None, float | None] = (None, None)  # the schema's range

    def schema(self) -> dict:
        """This metric's JSON Schema property (data/report.schema.json must agree)."""
        if self.fmt in ("int", "count"):
            return {"$ref": "#/$defs/count"}
        if self.fmt == "ids":
            return {"$ref": "#/$defs/ids"}
        low, high = self.bounds
        if low is None and high is None:
            return {"$ref": "#/$defs/number"}
        prop: dict = {"type": ["number", "null"]}
        if low is not None:
            prop["minimum"] = low
        if high is not None:
            prop["maximum"] = high
        return prop


_H, _L = "higher", "lower"
_T, _S = {"from_tokens": True}, {"from_tokens": True, "without_skip": True}
_POSITIVE = {"bounds": (0, None)}
# The guide's order: always-on first ("the #1 problem"), reconstruction detail after its
# headline; graded metrics appear in this order everywhere.
METRICS: tuple[MetricDecl, ...] = (
    MetricDecl("always_on_count", "always-on features", "int", _L, True, DENSITIES, **_T),
    MetricDecl("always_on_features", "always-on ids", "ids"),
    MetricDecl("diversity_top10", "diversity (top-10)", "f2", _H, True, JACKKNIFE, **_T,
               bounds=(0, 10)),  # fmt: skip
    MetricDecl("loss_recovered", "loss recovered", "f4", _H, True, JACKKNIFE),
    MetricDecl("variance_explained", "variance explained", "f4", _H, False, JACKKNIFE, **_S),
    MetricDecl("variance_explained_legacy", "variance explained (legacy)", "f4", _H, **_T),
    MetricDecl("fvu", "FVU", "f4", _L, False, JACKKNIFE, **_S),
    MetricDecl("ce_clean", "CE clean", "f4", None, False, JACKKNIFE),
    MetricDecl("ce_sae", "CE with SAE", "f4", _L, False, JACKKNIFE),
    MetricDecl("ce_ablated", "CE zero-ablated", "f4", None, False, JACKKNIFE),
    MetricDecl("kl_score", "KL score", "f4", _H, False, JACKKNIFE),
    MetricDecl("error_share", "error share ‖x−x̂‖²/‖x‖²", "f4", _L, False, JACKKNIFE, **_S,
               **_POSITIVE),  # fmt: skip
    MetricDecl("variance_explained_without_skip", "variance explained, no skip", "f4", _H),
    MetricDecl("mse", "MSE", "g4", _L, False, JACKKNIFE, **_S),
    MetricDecl("cossim", "cosine(x, x̂)", "f4", _H, False, JACKKNIFE, **_S),
    MetricDecl("l2_ratio", "‖x̂‖/‖x‖", "f4", **_T),
    MetricDecl("relative_reconstruction_bias", "relative recon. bias", "f4", **_T),
    MetricDecl("l0", "L0", "f2", None, True, JACKKNIFE, **_T, **_POSITIVE),
    MetricDecl("dead_pct", "dead %", "pct", _L, True, DENSITIES, **_T, bounds=(0, 100)),
    MetricDecl("dead_count", "dead", "int", _L, False, DENSITIES, **_T),
    MetricDecl("never_fired_count", "never fired", "int", _L, **_T),
    MetricDecl("dense_count", "dense (>10%)", "int", _L, False, DENSITIES, **_T),
    # from the weights, but only once the densities say which features are alive
    MetricDecl("absorption", "absorption (max dec. cos)", "f4", _L, True, WEIGHTS, **_T),
    MetricDecl("first_letter_absorption", "first-letter absorption (lower is better)", "f4",
               _L),  # fmt: skip
    MetricDecl("tokens_seen", "tokens seen", "count"),
)
BY_KEY = {m.key: m for m in METRICS}
GRADED = tuple(m.key for m in METRICS if m.graded)
MEASURED = tuple(m.key for m in METRICS if m.from_tokens)
WITHOUT_SKIP = tuple(m.key for m in METRICS if m.without_skip)
DIVERSITY_KEY = "diversity_top10"  # the registered key; a suite with another top renames it
