"""The always-on and dead feature ids of one SAE, read from its `saedoctor diagnose` report,
for `saedoctor compare --features` to say which of them have a counterpart in the other SAE.

Always-on ids are the entry's `metrics.always_on_features`; dead ids are the features whose
measured `feature_density` is below the dead threshold (SPEC §2: 0.05 % of tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from saedoctor.errors import InputError
from saedoctor.report.always_on import always_on_features

# SPEC §2: a feature is dead when it fires on fewer than 0.05 % of tokens (FeatureStats).
DEAD_DENSITY = 0.0005


@dataclass(frozen=True)
class FlaggedIds:
    """One SAE's flagged features, ascending ids; `entry` names the report entry read."""

    entry: str
    always_on: list[int]
    dead: list[int]

    def flag_of(self, feature: int) -> str | None:
        if feature in self._always_on_set:
            return "always_on"
        return "dead" if feature in self._dead_set else None

    @cached_property
    def _always_on_set(self) -> frozenset[int]:
        return frozenset(self.always_on)

    @cached_property
    def _dead_set(self) -> frozenset[int]:
        return frozenset(self.dead)


def flagged_ids(document: dict[str, Any], sae_path: str, d_sae: int, flag: str) -> FlaggedIds:
    """The flagged ids of the report entry that read `sae_path` (or of its only entry).
    `flag` names the option that gave the report, for errors."""
    entry = _entry_for(document, sae_path, flag)
    size = (entry.get("config") or {}).get("d_sae")
    if size != d_sae:
        raise InputError(f"{flag}: entry {entry['name']!r} has d_sae={size} but the SAE "
                         f"{sae_path} has {d_sae}; expected the report of that SAE")  # fmt: skip
    density = entry.get("feature_density") or []
    if len(density) != d_sae:
        raise InputError(f"{flag}: entry {entry['name']!r} has {len(density)} per-feature "
                         f"densities, not {d_sae}; expected one that measured them")  # fmt: skip
    threshold = (document["run"].get("options") or {}).get("dead_threshold") or DEAD_DENSITY
    dead = [i for i, value in enumerate(density) if value < threshold]
    return FlaggedIds(entry["name"], [f.id for f in always_on_features(entry)], dead)


def _entry_for(document: dict[str, Any], sae_path: str, flag: str) -> dict[str, Any]:
    entries = document["saes"]
    wanted = Path(sae_path).resolve()
    same = [e for e in entries if e.get("path") and Path(e["path"]).resolve() == wanted]
    if len(same) == 1:
        return same[0]
    if len(entries) == 1 and not same:
        return entries[0]
    names = ", ".join(repr(e["name"]) for e in entries)
    raise InputError(f"{flag}: {len(same) or 'none'} of its {len(entries)} SAE entries "
                     f"({names}) read {sae_path}; expected exactly one")  # fmt: skip
