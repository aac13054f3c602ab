"""The pre-flight's loud lines: a miswired site or scale is said at once, before minutes of
streaming, and again in the report as a critical diagnosis."""

from __future__ import annotations

from saedoctor.health.preflight import Preflight
from saedoctor.health.rules.preflight_norm import misscaled
from saedoctor.health.rules.preflight_site import misplaced
from saedoctor.progress import stderr_console


def announce(results: dict[str, Preflight]) -> None:
    """One loud line per miswired SAE, before the main pass starts."""
    for name, pre in results.items():
        if pre.site is not None and misplaced(pre.site):
            best = pre.site.best
            stderr_console.print(
                f"[bold red]pre-flight[/]: {name} fits {best.hook_name} (FVU {best.fvu:.3f}), "
                f"not its declared {pre.site.declared.hook_name} (FVU "
                f"{pre.site.declared.fvu:.3f}): wrong --layer / --site?",
                highlight=False,
                soft_wrap=True,
            )
        elif pre.norm is not None and misscaled(pre.norm):
            best = pre.norm.best
            stderr_console.print(
                f"[bold red]pre-flight[/]: {name} fits its input ×{best.scale:.3g} far better "
                f"(FVU {best.fvu:.3f} vs {pre.norm.at_one.fvu:.3f} as fed): activations at the "
                "wrong scale?",
                highlight=False,
                soft_wrap=True,
            )
