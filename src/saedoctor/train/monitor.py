"""Live health monitor: the guide's metrics on the last window of training, every N steps.

Per SAE and window: always-on count and ids, dead %, L0 (every token) and variance explained
(the first 256 tokens of each shuffled micro-batch), with the code of `saedoctor diagnose`
(`FeatureStats` and `Reconstruction` from saedoctor.metrics), plus the loss terms and the
learning rate. Diversity (top-10 per sequence) needs whole
sequences, which shuffled training batches do not have, so it is left to `diagnose`.

Warnings fire the moment a feature turns always-on (a new id in the window's always-on set)
and when dead % enters a problem band of the grading policy (only once the window is long
enough to call a latent dead: tokens x 0.0005 >= 20). Every report goes to the live table
(or one line per SAE when stderr is not a terminal), `metrics.jsonl`, and optionally W&B /
TensorBoard under the same keys: `<sae>/always_on_count`, `<sae>/dead_pct`, `<sae>/l0`,
`<sae>/variance_explained`, `<sae>/loss/<term>`, `<sae>/lr`, `tokens`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.table import Table

from saedoctor.errors import InputError
from saedoctor.metrics.features import FeatureStats
from saedoctor.metrics.reconstruction import Reconstruction
from saedoctor.sae.codes import Codes
from saedoctor.thresholds import ALWAYS_ON_DENSITY, DEAD_DENSITY

MIN_EXPECTED_FIRINGS = 20  # as the dead-features rule: below this a window is too short
MIN_WINDOW_TOKENS = int(MIN_EXPECTED_FIRINGS / DEAD_DENSITY)  # 40 000
MAX_IDS = 8
RECON_ROWS = 256
STYLE = {"excellent": "green", "good": "green", "warning": "yellow", "critical": "bold red"}


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per report, appended (a resumed run continues the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        pass


class WandbLogger:
    def __init__(self, project: str, name: str, config: dict[str, Any], run_id: str | None,
                 directory: Path) -> None:  # fmt: skip
        try:
            import wandb
        except ImportError as e:
            raise InputError("--log-to wandb: the wandb package is not installed "
                             "(pip install wandb)") from e  # fmt: skip
        self.run = wandb.init(project=project, name=name, config=config, id=run_id,
                              resume="allow", dir=str(directory))  # fmt: skip
        self.run_id = self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardLogger:
    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise InputError("--log-to tensorboard: the tensorboard package is not installed "
                             "(pip install tensorboard)") from e  # fmt: skip
        self.writer = SummaryWriter(str(directory))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Window:
    def __init__(self, d_in: int, d_sae: int, always_on: float) -> None:
        self.features = FeatureStats(d_sae, always_on_threshold=always_on)
        self.recon = Reconstruction(d_in)
        self.losses: dict[str, float] = {}
        self.micro = 0


class HealthMonitor:
    """Window statistics per SAE, reports every `every` steps, warnings, loggers."""

    def __init__(self, saes: dict[str, tuple[int, int]], every: int, *,
                 always_on: float = ALWAYS_ON_DENSITY,
                 policy: Any = None, console: Console | None = None, live: bool = False,
                 quiet: bool = False, loggers: list[MetricLogger] | None = None) -> None:
        from saedoctor.health import load_policy

        self.shapes = dict(saes)
        self.every, self.always_on = every, always_on
        self.policy = policy or load_policy()
        self.console = console or Console(stderr=True)
        self.live, self.quiet = live, quiet
        self.loggers = list(loggers or [])
        self.windows = {n: _Window(d_in, d_sae, always_on) for n, (d_in, d_sae) in saes.items()}
        self.always_on_ids: dict[str, list[int]] = {n: [] for n in saes}
        self.dead_status: dict[str, str] = {n: "excellent" for n in saes}
        self.history: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.latest: dict[str, dict[str, Any]] = {}

    # -- feeding ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, name: str, x: torch.Tensor, x_hat: torch.Tensor, codes: Codes,
               losses: dict[str, float]) -> None:  # fmt: skip
        w = self.windows[name]
        w.features.update(codes)
        # Batches are shuffled, so their first rows are a random sample: variance explained on
        # RECON_ROWS of them costs a quarter of the float64 passes and is as good a monitor.
        w.recon.update(x[:RECON_ROWS], x_hat[:RECON_ROWS])
        for k, v in losses.items():
            w.losses[k] = w.losses.get(k, 0.0) + v
        w.micro += 1

    def due(self, step: int) -> bool:
        return step % self.every == 0

    # -- reporting -------------------------------------------------------------------------
    def report(self, step: int, tokens: int, lrs: dict[str, float]) -> list[dict[str, Any]]:
        """Close the window: metrics per SAE, warnings, loggers; returns the rows."""
        rows = []
        for name, w in self.windows.items():
            if w.micro == 0:
                continue
            row = self._row(name, w, step, tokens, lrs.get(name))
            self._warn(name, row)
            rows.append(row)
            self.reset_window(name)
        if not rows:
            return rows
        self.history.extend(rows)
        for row in rows:
            self.latest[row["sae"]] = row
        flat = self.flat(rows, tokens)
        for logger in self.loggers:
            logger.log(flat, step)
        if not self.live and not self.quiet:
            for row in rows:
                self.console.print(self.line(row), highlight=False, soft_wrap=True)
        return rows

    def _row(self, name: str, w: _Window, step: int, tokens: int, lr: float | None) -> dict:
        feats = w.features.compute()
        recon = w.recon.compute()
        seen = int(feats["tokens_seen"])
        return {
            "sae": name, "step": step, "tokens": tokens, "window_tokens": seen,
            "always_on_count": feats["always_on_count"],
            "always_on_features": feats["always_on_features"],
            "dead_pct": feats["dead_pct"],
            "dead_measurable": seen * DEAD_DENSITY >= MIN_EXPECTED_FIRINGS,
            "l0": feats["l0"], "variance_explained": recon["variance_explained"],
            "losses": {k: v / w.micro for k, v in w.losses.items()}, "lr": lr,
        }  # fmt: skip

    def status(self, metric: str, value: float | None) -> str | None:
        from saedoctor.health.grading import status_of

        mp = self.policy.metrics.get(metric)
        if mp is None or value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return status_of(value, mp, self.policy)

    def _warn(self, name: str, row: dict[str, Any]) -> None:
        step = row["step"]
        new = [i for i in row["always_on_features"] if i not in self.always_on_ids[name]]
        self.always_on_ids[name] = list(row["always_on_features"])
        if new:
            self._emit(f"step {step}: {name}: {_ids(new)} turned always-on "
                       f"(> {self.always_on:.0%} of the last {row['window_tokens']:,} tokens; "
                       f"{row['always_on_count']} always-on now)")  # fmt: skip
        if not row["dead_measurable"]:
            return
        status = self.status("dead_pct", row["dead_pct"]) or "excellent"
        before = self.dead_status[name]
        self.dead_status[name] = status
        order = ("excellent", "good", "warning", "critical")
        if status in ("warning", "critical") and order.index(status) > order.index(before):
            self._emit(f"step {step}: {name}: dead features {row['dead_pct']:.1f}% "
                       f"crossed into the {status} band")  # fmt: skip

    def _emit(self, message: str) -> None:
        self.warnings.append(message)
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    @staticmethod
    def flat(rows: list[dict[str, Any]], tokens: int) -> dict[str, float]:
        out: dict[str, float] = {"tokens": float(tokens)}
        for row in rows:
            n = row["sae"]
            for key in ("always_on_count", "dead_pct", "l0", "variance_explained", "lr"):
                if row.get(key) is not None:
                    out[f"{n}/{key}"] = float(row[key])
            for key, value in row["losses"].items():
                out[f"{n}/loss/{key}"] = float(value)
        return out

    def line(self, row: dict[str, Any]) -> str:
        ve = row["variance_explained"]
        dead = f"{row['dead_pct']:.1f}%" + ("" if row["dead_measurable"] else " (short window)")
        return (f"step {row['step']} {row['sae']}: VE {_fmt(ve)}, L0 {row['l0']:.1f}, "
                f"dead {dead}, always-on {row['always_on_count']}"
                f"{' ' + _ids(row['always_on_features']) if row['always_on_count'] else ''}, "
                f"mse {row['losses'].get('mse', float('nan')):.4f}")  # fmt: skip

    def table(self) -> Table:
        table = Table(title="SAE health (last window)", title_justify="left")
        for col in ("SAE", "step", "tokens", "var. explained", "L0", "dead %", "always-on",
                    "mse"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("SAE", "always-on") else "right")
        for name in self.windows:
            row = self.latest.get(name)
            if row is None:
                table.add_row(name, "-", "-", "-", "-", "-", "-", "-")
                continue
            dead = f"{row['dead_pct']:.1f}" + ("" if row["dead_measurable"] else "*")
            ao = str(row["always_on_count"])
            if row["always_on_count"]:
                ao += f" {_ids(row['always_on_features'])}"
            table.add_row(
                name, str(row["step"]), f"{row['tokens']:,}",
                self._cell("loss_recovered", row["variance_explained"], _fmt(
                    row["variance_explained"])),
                self._cell("l0", row["l0"], f"{row['l0']:.1f}"),
                self._cell("dead_pct", row["dead_pct"] if row["dead_measurable"] else None, dead),
                self._cell("always_on_count", row["always_on_count"], ao),
                f"{row['losses'].get('mse', float('nan')):.4f}",
            )  # fmt: skip
        return table

    def _cell(self, metric: str, value: float | None, text: str) -> str:
        status = self.status(metric, value)
        return f"[{STYLE[status]}]{text}[/]" if status in STYLE else text

    # -- windows across ranks (train/ranks.py) -------------------------------------------
    def window_state(self, name: str) -> dict[str, Any]:
        w = self.windows[name]
        return {"features": w.features.state_dict(), "recon": w.recon.state_dict(),
                "losses": dict(w.losses), "micro": w.micro}  # fmt: skip

    def merge_window(self, name: str, state: dict[str, Any]) -> None:
        """Fold another rank's window of SAE `name` into this one (sums throughout)."""
        d_in, d_sae = self.shapes[name]
        other = _Window(d_in, d_sae, self.always_on)
        other.features.load_state_dict(state["features"])
        other.recon.load_state_dict(state["recon"])
        w = self.windows[name]
        w.features.merge(other.features)
        w.recon.merge(other.recon)
        for k, v in state["losses"].items():
            w.losses[k] = w.losses.get(k, 0.0) + v
        w.micro += int(state["micro"])

    def reset_window(self, name: str) -> None:
        d_in, d_sae = self.shapes[name]
        self.windows[name] = _Window(d_in, d_sae, self.always_on)

    # -- state (checkpoints) ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        windows = {name: self.window_state(name) for name in self.windows}
        return {"windows": windows, "always_on_ids": self.always_on_ids,
                "dead_status": self.dead_status, "history_json": json.dumps(self.history),
                "warnings": list(self.warnings)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, saved in state["windows"].items():
            w = self.windows[name]
            w.features.load_state_dict(saved["features"])
            w.recon.load_state_dict(saved["recon"])
            w.losses, w.micro = dict(saved["losses"]), int(saved["micro"])
        self.always_on_ids = {k: list(v) for k, v in state["always_on_ids"].items()}
        self.dead_status = dict(state["dead_status"])
        self.history = json.loads(state["history_json"])
        self.warnings = list(state["warnings"])
        for row in self.history:
            self.latest[row["sae"]] = row


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:MAX_IDS])
    more = f", +{len(ids) - MAX_IDS} more" if len(ids) > MAX_IDS else ""
    return f"[{shown}{more}]"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
