"""The SAE training-quality guide's three models (Llama-2-7B, FinLlama, Goodfire), every value
tagged: `Given` quotes where the guide states it, `Invented` says why it was made up.

The guide (sae_training_quality_metrics_guide.md, beside SPEC.md) gives:
- Llama-2-7B, per layer 4/10/16/22/28: always-on ids, loss recovered, L0, dead %; absorption
  only as one range over the layers, 0.196-0.269; diversity 10/10 ("All models");
- FinLlama (one SAE: "Why Your FinLlama SAE Failed"): feature 389 at 86-94 %, absorption
  0.265-0.312, L0 856.27, dead 78.26 %, loss recovery only "Below SAEBench thresholds",
  trained on WikiText-103 and evaluated on financial text; no layer;
- Goodfire: 0 always-on features, diversity 10/10, nothing else.

Everything else is either left out (then graded "not measured") or, where a report needs a
value, `Invented`, and no expected verdict may rest on an invented value
(tests/test_guide_examples.py checks that). `example_reports()` is what
scripts/make_guide_examples.py writes to docs/examples/guide/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GUIDE = "sae_training_quality_metrics_guide.md"
# Quotes are the guide's words with its Markdown emphasis and emoji left out.
SECTION = {
    "always_on_def": "§1 Always-On Feature Detection, What it measures",
    "always_on": "§1 Always-On Feature Detection, Your Results",
    "diversity": "§2 Feature Diversity Score, Your Results",
    "loss": "§3 Loss Recovered, Your Results",
    "l0": "§4 L0 Sparsity, Your Results",
    "dead": "§5 Dead Feature Percentage, Your Results",
    "absorption": "§6 Feature Absorption, Your Results",
    "table": "Layer-by-Layer Analysis Summary",
    "root": "Root Cause Analysis: Why Your FinLlama SAE Failed",
    "criteria": "Success Criteria, Poor SAE (Your FinLlama)",
}


@dataclass(frozen=True)
class Given:
    """A value the guide states; `where` quotes it."""

    value: Any
    where: str


@dataclass(frozen=True)
class Invented:
    """A value the guide does not give. `span`: the guide's stated range it was placed in (a
    test moves it across that range); None when the guide bounds it nowhere."""

    value: Any
    why: str
    span: tuple[float, float] | None = None


Value = Given | Invented


def quote(section: str, text: str) -> str:
    return f'{GUIDE}, {SECTION[section]}: "{text}"'


DIVERSITY = Given(10.0, quote("diversity", "All models: 10/10 unique features EXCELLENT"))
ALWAYS_ON_THRESHOLD = Given(0.8, quote("always_on_def", "Features that activate on >80% of tokens"))


@dataclass(frozen=True)
class GuideSAE:
    name: str
    layer: Given | None  # None: the guide names no layer
    metrics: dict[str, Value]
    not_measured: dict[str, str] = field(default_factory=dict)  # metric -> why
    explanations: tuple[dict[str, Value], ...] = ()  # always_on_explanations, field -> value


@dataclass(frozen=True)
class GuideModel:
    name: Given
    file: str  # under docs/examples/guide/
    saes: tuple[GuideSAE, ...]
    verdict: Given  # the guide's verdict for this model, in its words
    corpus: Given | None = None
    training_corpus: Given | None = None


# --- Llama-2-7B: the guide's five-layer sweep --------------------------------------------
LLAMA_LAYERS: dict[int, dict[str, Value]] = {
    layer: {
        "always_on_features": Given(ids, quote("table", f"| **{layer}** | {ids_text} |")),
        "always_on_count": Given(len(ids), f"the number of ids the guide lists for layer {layer}"),
        "loss_recovered": Given(loss, quote("loss", f"Llama-2-7B Layer {layer}: {loss:.2%}")),
        "l0": Given(l0, quote("l0", f"Llama-2-7B Layer {layer}: {l0:.2f}")),
        "dead_pct": Given(dead, quote("dead", f"Llama-2-7B Layer {layer}: {dead:.2f}%")),
        "diversity_top10": DIVERSITY,
    }
    for layer, ids, ids_text, loss, l0, dead in (
        (4, [25], "Feature 25", 0.9842, 61.37, 28.25),
        (10, [389], "Feature 389", 0.9684, 58.80, 1.00),
        (16, [214], "Feature 214", 0.9002, 76.38, 0.00),
        (22, [290, 294], "Features 290,294", 0.6624, 94.33, 0.00),
        (28, [134, 294], "Features 134,294", 0.0487, 125.58, 0.00),
    )
}
LLAMA_ABSORPTION_RANGE = Given((0.196, 0.269), quote("absorption", "Llama-2-7B: 0.196-0.269"))
# The guide gives absorption for the whole sweep only; its two ends are placed at the first
# and last layer and the layers between get evenly spaced values. Which layer has which value is
# made up; that every value lies in 0.196-0.269 is the guide's.
LLAMA_ABSORPTION: dict[int, float] = {4: 0.196, 10: 0.214, 16: 0.231, 22: 0.252, 28: 0.269}
ABSORPTION_WHY = (f"the guide gives only the range over the five layers "
                  f"({LLAMA_ABSORPTION_RANGE.where}); this layer's value is made up inside it")


def llama_sae(layer: int) -> GuideSAE:
    metrics = dict(LLAMA_LAYERS[layer])
    metrics["absorption"] = Invented(LLAMA_ABSORPTION[layer], ABSORPTION_WHY,
                                     LLAMA_ABSORPTION_RANGE.value)
    return GuideSAE(f"llama-2-7b-L{layer}:blocks.{layer}.hook_resid_post",
                    Given(layer, quote("table", f"| **{layer}** |")), metrics)


LLAMA = GuideModel(
    name=Given("Llama-2-7B", quote("always_on", "Llama-2-7B: 1-2 always-on features per layer")),
    file="llama-2-7b.json",
    saes=tuple(llama_sae(layer) for layer in LLAMA_LAYERS),
    verdict=Given("mild issue", quote("always_on", "Llama-2-7B: 1-2 always-on features per "
                                                    "layer MILD ISSUE")),
)

# --- FinLlama: one failed SAE -------------------------------------------------------------
FINLLAMA_ABSORPTION_RANGE = Given((0.265, 0.312), quote("absorption", "FinLlama: 0.265-0.312 "
                                                                      "BORDERLINE"))
FINLLAMA_DENSITY_RANGE = Given([0.86, 0.94], quote("always_on", "FinLlama: Feature 389 (86-94% "
                                                               "frequency)"))
# The guide's bound on the loss recovery it does not quantify (a test moves it across this).
FINLLAMA_LOSS_BOUND = Given((0.0, 0.70), quote("criteria", "<70% loss recovered"))
FINLLAMA = GuideModel(
    name=Given("FinLlama", quote("root", "Why Your FinLlama SAE Failed")),
    file="finllama.json",
    saes=(GuideSAE(
        name="finllama",
        layer=None,
        metrics={
            "always_on_features": Given([389], FINLLAMA_DENSITY_RANGE.where),
            "always_on_count": Given(1, "the one id the guide lists: feature 389"),
            "diversity_top10": DIVERSITY,
            "l0": Given(856.27, quote("root", "High L0 Sparsity: 856.27 (way too high)")),
            "dead_pct": Given(78.26, quote("root", "Many Dead Features: 78.26% (critical)")),
            "absorption": Invented(
                0.2885, f"the middle of the guide's range ({FINLLAMA_ABSORPTION_RANGE.where}); "
                "one SAE holds one value", FINLLAMA_ABSORPTION_RANGE.value),
        },
        not_measured={"loss_recovered": (
            f'{GUIDE} gives no number: "Poor Loss Recovery: Below SAEBench thresholds" '
            f"({SECTION['root']}) and \"<70% loss recovered\" ({SECTION['criteria']})")},
        explanations=({"feature": Given(389, FINLLAMA_DENSITY_RANGE.where),
                       "density_range": FINLLAMA_DENSITY_RANGE},),
    ),),
    verdict=Given("critical issue", quote("always_on", "FinLlama: Feature 389 (86-94% frequency)"
                                                       " CRITICAL ISSUE")),
    corpus=Given("financial text", quote("root", "Trained on WikiText-103, evaluated on "
                                                 "financial text")),
    training_corpus=Given("WikiText-103", quote("root", "Trained on WikiText-103, evaluated on "
                                                        "financial text")),
)

# --- Goodfire: the healthy one ------------------------------------------------------------
NOT_IN_GUIDE = f"{GUIDE} gives no Goodfire number for this metric"
GOODFIRE = GuideModel(
    name=Given("Goodfire", quote("always_on", "Goodfire: 0 always-on features")),
    file="goodfire.json",
    saes=(GuideSAE(
        name="goodfire",
        layer=None,
        metrics={
            "always_on_features": Given([], quote("always_on", "Goodfire: 0 always-on features")),
            "always_on_count": Given(0, quote("always_on", "Goodfire: 0 always-on features")),
            "diversity_top10": DIVERSITY,
        },
        not_measured={m: NOT_IN_GUIDE for m in ("loss_recovered", "l0", "dead_pct", "absorption")},
    ),),
    verdict=Given("healthy", quote("always_on", "Goodfire: 0 always-on features HEALTHY")),
)

GUIDE_MODELS: tuple[GuideModel, ...] = (LLAMA, FINLLAMA, GOODFIRE)

# --- turning a model into a saedoctor.report/1 document -----------------------------------
CREATED = "2026-12-01T00:00:00Z"
SITE_WHY = "the guide names layers, not sites or hooks: resid_post is assumed"
EMPTY_WHY = "empty: the guide gives no per-feature densities (saedoctor's default bins)"
NOTE = ("Constructed from the published figures of the SAE training-quality guide "
        f"({GUIDE}), not measured by saedoctor. Each SAE's provenance lists the values the guide "
        "gives (and where) and the values made up to complete the report (and why); grading, "
        "diagnoses and prescriptions are saedoctor's default policy applied to them.")

# Chooses the value of an invented metric: (sae, metric, invented) -> value, None = leave out.
Choice = Callable[[GuideSAE, str, Invented], Any]


def as_invented(sae: GuideSAE, metric: str, value: Invented) -> Any:
    return value.value


def report(model: GuideModel, choose: Choice = as_invented) -> dict[str, Any]:
    """An ungraded saedoctor.report/1 document: given values, invented ones via `choose`."""
    from saedoctor import __version__

    run_given = {"model.name": model.name.where,
                 "options.always_on_threshold": ALWAYS_ON_THRESHOLD.where}
    if model.corpus is not None:
        run_given["corpus"] = model.corpus.where
    run = {
        "created": CREATED, "versions": {"saedoctor": __version__},
        "options": {"always_on_threshold": ALWAYS_ON_THRESHOLD.value},
        "model": {"name": model.name.value},
        "corpus": model.corpus.value if model.corpus else None,
        "compare_corpus": None, "activations_file": None, "seed": None, "wall_time_s": None,
        "tokens_processed": None, "tokens_counted": None, "sequences": None,
        "note": NOTE,
        "provenance": {"source": GUIDE, "given": run_given, "invented": {
            "created": "a fixed date, so that the file can be regenerated byte for byte"}},
    }
    return {"schema": "saedoctor.report/1", "run": run,
            "saes": [entry(model, sae, choose) for sae in model.saes]}


def entry(model: GuideModel, sae: GuideSAE, choose: Choice) -> dict[str, Any]:
    from torch import zeros

    from saedoctor.metrics.histogram import density_histogram

    given: dict[str, str] = {}
    invented: dict[str, str] = {"density_histogram": EMPTY_WHY, "feature_density": EMPTY_WHY}
    metrics: dict[str, Any] = {}
    not_measured = dict(sae.not_measured)
    for key, value in sae.metrics.items():
        if isinstance(value, Given):
            metrics[key], given[f"metrics.{key}"] = value.value, value.where
            continue
        chosen = choose(sae, key, value)
        if chosen is None:
            not_measured[key] = f"{GUIDE} does not give it"
        else:
            metrics[key], invented[f"metrics.{key}"] = chosen, value.why
    explanations = []
    for i, explanation in enumerate(sae.explanations):
        explanations.append({k: v.value for k, v in explanation.items()})
        for k, v in explanation.items():
            path = f"always_on_explanations[{i}].{k}"
            if isinstance(v, Given):
                given[path] = v.where
            else:
                invented[path] = v.why
    config: dict[str, Any] = {"model_name": model.name.value}
    given["config.model_name"] = model.name.where
    if model.training_corpus is not None:
        config["metadata"] = {"training_corpus": model.training_corpus.value}
        given["config.metadata.training_corpus"] = model.training_corpus.where
    return {
        "name": sae.name, "path": None, "config": config, "site": site(sae, given, invented),
        "metrics": metrics, "not_measured": not_measured,
        "always_on_explanations": explanations,
        "density_histogram": density_histogram(zeros(0)), "feature_density": [],
        "feature_mean_activation": [],
        "provenance": {"source": GUIDE, "given": given, "invented": invented},
    }


def site(sae: GuideSAE, given: dict[str, str], invented: dict[str, str]) -> dict[str, Any]:
    if sae.layer is None:
        return {"layer": None, "kind": "unknown", "hook_name": None,
                "description": "layer and site not given by the guide"}
    layer = sae.layer.value
    given["site.layer"] = sae.layer.where
    invented.update({"site.kind": SITE_WHY, "site.hook_name": SITE_WHY})
    hook = f"blocks.{layer}.hook_resid_post"
    return {"layer": layer, "kind": "resid_post", "hook_name": hook,
            "description": f"{hook} (block {layer} resid_post; the site is assumed)"}


def graded(document: dict[str, Any]) -> dict[str, Any]:
    """Graded and diagnosed by the real grader with the default policy."""
    from saedoctor.health import apply_health, load_policy

    return apply_health(document, load_policy())


def example_reports(choose: Choice = as_invented) -> dict[str, dict[str, Any]]:
    """docs/examples/guide/<file> -> its graded document."""
    return {model.file: graded(report(model, choose)) for model in GUIDE_MODELS}
