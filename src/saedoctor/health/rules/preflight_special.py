"""Pre-flight rule (c): BOS / EOS positions change the metrics materially and the run
counts them (`--include-special`).

Special positions are outliers of their own (a BOS attention sink often has tens of times a
token's norm): counted, a handful of them can dominate FVU. The check measures FVU and L0
with and without them on the pre-flight tokens and says whether the SAE was trained on them
(its metadata, where it says).
"""

from __future__ import annotations

from typing import Any

from saedoctor.health.fmt import num, pct
from saedoctor.health.preflight import SpecialCheck, preflight_of
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis

# Material: 5 points of variance explained (half a grading band of loss recovered / VE), or
# L0 moved by a fifth (enough to cross an L0 band edge such as 20 or 300).
FVU_SHIFT = 0.05
L0_SHIFT = 0.2


def distorted(check: SpecialCheck) -> bool:
    """Whether counting the special positions moves FVU or L0 materially."""
    if check.special_tokens == 0:
        return False
    fvu_moved = abs(check.fvu_with - check.fvu_without) >= FVU_SHIFT
    base = max(check.l0_without, 1e-12)
    return fvu_moved or abs(check.l0_with - check.l0_without) / base >= L0_SHIFT


def preflight_special(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    pre = preflight_of(entry)
    check = pre.special if pre is not None else None
    if check is None or not check.evaluated_with_special or not distorted(check):
        return None
    return diagnosis(
        "preflight_special",
        f"special tokens distort the metrics: FVU {check.fvu_with:.3f} with BOS/EOS, "
        f"{check.fvu_without:.3f} without",
        "warning",
        special_evidence(check),
        "This run counts BOS / EOS positions (--include-special), and on the pre-flight tokens "
        "they change FVU or L0 materially. Their activations are unlike any text token's (a "
        "BOS attention sink is often tens of times larger), so a handful of them can dominate "
        "the averages. Judge the SAE on text tokens: drop --include-special.",
        [_exclude()],
    )


def special_evidence(check: SpecialCheck) -> list[str]:
    lines = [
        f"{num(check.special_tokens)} of {num(check.tokens)} pre-flight tokens are BOS/EOS",
        f"with them: FVU {check.fvu_with:.3f}, L0 {num(check.l0_with)}; without: FVU "
        f"{check.fvu_without:.3f}, L0 {num(check.l0_without)} (material: FVU ± {FVU_SHIFT} "
        f"or L0 ± {pct(L0_SHIFT, 0)})",
    ]
    if check.fvu_special_only is not None:
        lines.append(f"FVU on the special positions alone: {check.fvu_special_only:.3f}")
    lines.append(_trained(check))
    return lines


def _trained(check: SpecialCheck) -> str:
    if check.trained_with_special is None:
        return "whether the SAE was trained on special tokens: its metadata does not say"
    verb = "with" if check.trained_with_special else "without"
    return f"trained {verb} special tokens ({check.trained_source})"


def _exclude() -> Prescription:
    return Prescription(
        field="eval_include_special", old=True, new=False,
        why="a diagnose option, not a training change: rerun without --include-special",
    )  # fmt: skip
