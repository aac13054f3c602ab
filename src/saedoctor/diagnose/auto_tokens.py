"""`--tokens auto`: stream until more tokens could not change the verdict.

Every `CHECK_EVERY` counted tokens (after `MIN_TOKENS`), each SAE's graded metrics are read
mid-pass with their 95 % intervals (`MetricSuite.snapshot`, `Downstream.compute`). A metric
is settled when its interval and value fall in one status of the policy (no status can
change), or when the interval is narrower than `auto_width` times the value. The pass stops
once every graded metric of every SAE is settled, or at the `--tokens` cap; the report's
`run.tokens_auto` says which, after how many tokens, and what was still open at each check.
Loss recovered is settled too once the downstream budget (`--downstream-tokens`) is spent:
later batches do not measure it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saedoctor.health.grading import status_of
from saedoctor.health.policy import Policy

CHECK_EVERY = 8_192  # counted tokens between checks: a few batches
MIN_TOKENS = 16_384  # before the first check: every interval block holds a few sequences
CHECKS_KEPT = 20  # the report keeps the last checks only
DOWNSTREAM_METRIC = "loss_recovered"


@dataclass
class AutoStop:
    """The stop rule `ModelPass` asks after every batch; it records why it stopped."""

    policy: Policy
    units: list[Any]
    width: float
    cap: int
    downstream_budget: int | None
    checks: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    next_check: int = MIN_TOKENS

    def __call__(self, totals: dict[str, int]) -> bool:
        counted = totals["tokens_counted"]
        if counted < self.next_check:
            return False
        self.next_check = counted + CHECK_EVERY
        open_metrics = self.unsettled(totals["tokens_processed"])
        self.checks.append({"tokens_counted": counted, "unsettled": open_metrics})
        if not open_metrics:
            self.reason = "every graded status settled"
        return not open_metrics

    def unsettled(self, processed: int) -> list[str]:
        out = []
        for unit in self.units:
            for key, (value, interval) in self._graded(unit, processed).items():
                if not self._settled(key, value, interval):
                    out.append(f"{unit.name}: {key}")
        return out

    def _graded(self, unit: Any, processed: int) -> dict[str, tuple[float, list[float]]]:
        snapshot = {k: v for k, v in unit.suite.snapshot().items() if k in self.policy.metrics}
        budget_spent = self.downstream_budget is not None and processed >= self.downstream_budget
        downstream = unit.downstream.compute()
        interval = (downstream.get("downstream_intervals") or {}).get(DOWNSTREAM_METRIC)
        if interval is not None and not budget_spent:
            snapshot[DOWNSTREAM_METRIC] = (downstream[DOWNSTREAM_METRIC], interval)
        return snapshot

    def _settled(self, key: str, value: float, interval: list[float]) -> bool:
        low, high = interval
        if high - low <= self.width * abs(value):
            return True
        mp = self.policy.metrics[key]
        return len({status_of(v, mp, self.policy) for v in (low, value, high)}) == 1

    def describe(self, totals: dict[str, int]) -> dict[str, Any]:
        """The report's `run.tokens_auto`."""
        ended = ("the --tokens cap was reached first"
                 if totals.get("tokens_processed", 0) >= self.cap else "the corpus ended first")
        return {"width": self.width, "cap": self.cap,
                "tokens_counted": totals.get("tokens_counted"),
                "reason": self.reason or ended,
                "checks": self.checks[-CHECKS_KEPT:]}  # fmt: skip
