"""Sweep rule (g): reconstruction falls with depth and the deepest layer is a problem.

The guide's Llama-2-7B sweep: loss recovered 98.42 → 96.84 → 90.02 → 66.24 → 4.87 % from
layer 4 to 28. Late residual streams have larger norms and carry next-token directions that
a dictionary sized for early layers does not cover.
"""

from __future__ import annotations

from collections import Counter

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import pct
from saedoctor.health.policy import HEALTHY, PROBLEMS
from saedoctor.health.training import prescribe
from saedoctor.health.types import (
    Diagnosis,
    Graded,
    Prescription,
    SweepContext,
    diagnosis,
    severity_of,
)
from saedoctor.health.values import site_layer

MIN_LAYERS = 3
FALLING_SHARE = 0.5  # at least this share of layer-to-layer steps must go down


def late_layer_reconstruction(graded: list[Graded], ctx: SweepContext) -> Diagnosis | None:
    points = _best_per_layer(graded)
    if len(points) < MIN_LAYERS:
        return None
    layers = sorted(points)
    values = [points[layer].graded("loss_recovered")["value"] for layer in layers]
    deepest = points[layers[-1]]
    status = deepest.graded("loss_recovered")["status"]
    if status not in PROBLEMS or not _falls_with_depth(values):
        return None
    source = deepest.graded("loss_recovered")["source"].replace("_", " ")
    trail = " → ".join(f"layer {layer}: {pct(v)}" for layer, v in zip(layers, values, strict=True))
    return diagnosis(
        "late_layer_reconstruction",
        f"{source} falls with depth: layer {layers[-1]} at {pct(values[-1])}",
        severity_of(status),
        [f"{source} by layer: {trail}", f"layer {layers[-1]} is {status}"],
        "Reconstruction gets worse the deeper the layer: late residual streams have larger "
        "norms and carry the next-token prediction, which a dictionary sized and trained like "
        "the early ones does not cover. Use a layer that still reconstructs well, or give the "
        "late layer more latents, a larger k and more training tokens.",
        _use_healthy_layer(points, layers),
    )


def _best_per_layer(graded: list[Graded]) -> dict[int, Graded]:
    """One point per layer (the best-reconstructing SAE there), all graded on one source."""
    measured = [
        g
        for g in graded
        if site_layer(g.entry) is not None and g.graded("loss_recovered")["value"] is not None
    ]
    if not measured:
        return {}
    # Loss recovered and variance explained are different scales: never mix them in a trend.
    source = Counter(_source(g) for g in measured).most_common(1)[0][0]
    points: dict[int, Graded] = {}
    for g in (g for g in measured if _source(g) == source):
        layer = site_layer(g.entry) or 0
        if layer not in points or _value(g) > _value(points[layer]):
            points[layer] = g
    return points


def _value(g: Graded) -> float:
    return g.graded("loss_recovered")["value"]


def _source(g: Graded) -> str:
    return g.graded("loss_recovered")["source"]


def _falls_with_depth(values: list[float]) -> bool:
    """The deepest is the lowest and most layer-to-layer steps go down (noise may bump one)."""
    steps = list(zip(values, values[1:], strict=False))
    falling = sum(1 for a, b in steps if b < a)
    lowest_last = values[-1] == min(values) and values[-1] < values[0]
    return lowest_last and falling >= FALLING_SHARE * len(steps)


def _use_healthy_layer(points: dict[int, Graded], layers: list[int]) -> list[Prescription]:
    healthy = [la for la in layers if points[la].graded("loss_recovered")["status"] in HEALTHY]
    if not healthy:
        return []
    deepest = points[layers[-1]].entry
    why = f"layer {healthy[-1]} is the deepest that still reconstructs well"
    return within_limits(deepest, [prescribe(deepest, "layer", healthy[-1], why)])
