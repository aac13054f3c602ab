"""Streaming, mergeable float64 metric accumulators (SPEC §2)."""

from saedoctor.metrics.absorption import decoder_absorption
from saedoctor.metrics.diversity import Diversity
from saedoctor.metrics.features import FeatureStats
from saedoctor.metrics.histogram import density_histogram
from saedoctor.metrics.reconstruction import Reconstruction
from saedoctor.metrics.suite import MetricSuite

__all__ = [
    "Diversity",
    "FeatureStats",
    "MetricSuite",
    "Reconstruction",
    "decoder_absorption",
    "density_histogram",
]
