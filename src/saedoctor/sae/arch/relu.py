"""ReLU: `f = relu(pre)`, sparsity from an L1 (or smooth L0) penalty."""

from __future__ import annotations

from saedoctor.sae.arch.base import Architecture


class ReLU(Architecture):
    name = "relu"
    encoder_init_scale = 0.1


ARCHITECTURE = ReLU()
