"""The pre-flight results of one SAE (the report entry's `preflight` block), typed.

`saedoctor.diagnose.preflight` measures them on a few hundred tokens before the main pass
and writes `Preflight.to_dict()` into the entry; the pre-flight rules read the entry back
with `preflight_of` (a report re-graded from disk is read the same way).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# A fit elsewhere is evidence of miswiring only where the SAE actually works: it must
# explain at least half of that site's variance (random or broken SAEs explain none anywhere).
FIT_FVU = 0.5
# ...and the declared wiring must be clearly worse: at least 15 % more unexplained variance
# (the default SAE one block off: 33-36 % more, benchmarks in docs/grading.md), with the
# jackknife interval of the difference above zero.
WORSE_RATIO = 1.15


@dataclass(frozen=True)
class Gap:
    """FVU(declared) − FVU(alternative) with its 95 % jackknife interval."""

    value: float
    interval: list[float] | None

    @property
    def detectable(self) -> bool:
        return self.interval is not None and self.interval[0] > 0

    def text(self) -> str:
        """'difference 0.074, 95% interval [0.051, 0.097]' (or without the interval)."""
        if self.interval is None:
            return f"difference {self.value:.3f}"
        low, high = self.interval
        return f"difference {self.value:.3f}, 95% interval [{low:.3f}, {high:.3f}]"


def clearly_worse(declared: float, better: float, gap: Gap) -> bool:
    """Whether a declared wiring with FVU `declared` loses to one with FVU `better`."""
    return better <= FIT_FVU and declared >= WORSE_RATIO * better and gap.detectable


@dataclass(frozen=True)
class SiteFit:
    hook_name: str
    layer: int
    kind: str
    fvu: float


@dataclass(frozen=True)
class SiteCheck:
    """The SAE at its declared site and at the neighbouring blocks and sites."""

    declared: SiteFit
    candidates: list[SiteFit]  # every other site tried, best (lowest FVU) first
    gap: Gap | None = None  # declared minus the best candidate

    @property
    def best(self) -> SiteFit | None:
        return self.candidates[0] if self.candidates else None


@dataclass(frozen=True)
class ScaleFit:
    scale: float  # the SAE read `scale · x` (its output divided back)
    fvu: float


@dataclass(frozen=True)
class NormHint:
    """An input norm the SAE's metadata implies: `statistic` is `mean_norm` (E‖x‖) or
    `centred_rms` (sqrt E‖x − μ‖²); `recorded` when the trainer wrote down the very scale
    it trained on, else a possibility the metadata raises."""

    source: str
    statistic: str
    norm: float
    recorded: bool


@dataclass(frozen=True)
class NormCheck:
    mean_norm: float
    centred_rms: float
    scan: list[ScaleFit]  # in increasing scale
    best: ScaleFit
    at_one: ScaleFit
    gap: Gap | None = None  # FVU at scale 1 minus the best
    hints: list[NormHint] = field(default_factory=list)


@dataclass(frozen=True)
class SpecialCheck:
    tokens: int  # real (non-pad) positions read
    special_tokens: int  # BOS / EOS among them
    fvu_without: float
    fvu_with: float
    l0_without: float
    l0_with: float
    fvu_special_only: float | None
    evaluated_with_special: bool  # the run's --include-special
    trained_with_special: bool | None  # from the SAE's metadata; None: it does not say
    trained_source: str | None = None


@dataclass(frozen=True)
class OutlierCheck:
    gamma: float
    mean_norm: float
    std_norm: float
    b_dec_init: str | None  # how the SAE's b_dec started, when its metadata says
    centred_at_init: bool | None  # whether training subtracted the mean from the start


@dataclass(frozen=True)
class Preflight:
    tokens: int
    checks: list[str]
    site: SiteCheck | None = None
    norm: NormCheck | None = None
    special: SpecialCheck | None = None
    outliers: OutlierCheck | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # check → why it did not run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preflight_of(entry: dict[str, Any]) -> Preflight | None:
    """The entry's pre-flight results; None when absent or not of this shape."""
    data = entry.get("preflight")
    if not isinstance(data, dict):
        return None
    try:
        return _build(Preflight, data)
    except (TypeError, ValueError, KeyError):
        return None


def _build(cls: type, data: Any) -> Any:
    """`cls` (a dataclass of this module) from its `asdict` form."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _value(hints[k], v) for k, v in data.items() if k in names})


def _value(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _value(next(a for a in args if a is not type(None)), value)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [_build(args[0], v) for v in value]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    return value
