"""Interrupt and resume for `saedoctor diagnose`'s main pass.

The main pass streams a deterministic sequence of token batches and folds each one into
float64 accumulators (every SAE's `MetricSuite` and `Downstream`). Its whole state is
therefore those accumulators, the token totals and the number of batches done: saved after a
batch, a resumed run re-tokenises the corpus, skips that many batches without running the
model, and continues with the very same additions in the same order, so the finished report
is equal, bit for bit on the same device, to an uninterrupted run's.

The state is one safetensors file (tensors, plus the bookkeeping as JSON in its metadata,
never pickled code), written atomically: `<report>.partial.safetensors` beside the report, or
in the cache dir when there is no report path. It records a fingerprint of everything the
main pass depends on (options, model, SAE weights) so a resume with other inputs is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.progress import stderr_console

FORMAT = "saedoctor.diagnose-state/1"
SUFFIX = ".partial.safetensors"
RESUME_HINT = "rerun the same command with --resume to continue"

# The options the main pass depends on: a resume must match them all. The secondary passes
# (explanations, --compare-corpus, --first-letter-absorption) rerun from scratch on resume,
# and grading happens at the end, so their options may change.
MAIN_PASS_OPTIONS = ("model", "layer", "site", "corpus", "text_field", "tokens", "context",
                     "batch_size", "dtype", "include_special", "always_on_threshold",
                     "downstream", "downstream_tokens")  # fmt: skip


class DiagnoseInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during the main pass, raised once the state is saved.

    A KeyboardInterrupt, so code that catches `Exception` lets it through, as it would the
    plain Ctrl-C it stands for."""

    def __init__(self, path: Path, done: int, total: int, hint: str = RESUME_HINT) -> None:
        self.path, self.done, self.total, self.hint = path, done, total, hint
        super().__init__(
            f"interrupted after {done:,} of {total:,} tokens; state saved to {path}; {hint}"
        )

    def with_hint(self, hint: str) -> DiagnoseInterrupted:
        return DiagnoseInterrupted(self.path, self.done, self.total, hint)


def state_path_for(report: str | Path) -> Path:
    report = Path(report)
    return report.with_name(report.name + SUFFIX)


def cached_state_path(identity: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return defaults.cache_dir() / "diagnose" / f"{digest}{SUFFIX}"


def discard(path: str | Path | None) -> None:
    if path is not None:
        Path(path).unlink(missing_ok=True)


# -- fingerprint ---------------------------------------------------------------------------
def identity(opts: Any, model: dict[str, Any], units: list[Any]) -> dict[str, Any]:
    """What the main pass's result depends on, as plain JSON values."""
    return {
        "options": {k: getattr(opts, k) for k in MAIN_PASS_OPTIONS},
        "model": model,
        "saes": [{"name": u.name, "weights": weights_digest(u.sae)} for u in units],
    }


def weights_digest(sae: torch.nn.Module) -> str:
    """sha256 of the SAE's parameters and buffers (names, dtypes, shapes and bytes) and the
    config fields that change its output: the loaded weights, whatever the file format."""
    h = hashlib.sha256()
    cfg = sae.cfg
    fields = (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k, cfg.apply_b_dec_to_input)
    if cfg.is_transcoder:  # where it reads and writes changes what it measures
        fields += (str(cfg.site), str(cfg.output_site), cfg.d_target, cfg.skip)
    h.update(repr(fields).encode())
    for name, t in sorted(sae.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _mismatch(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    for key, value in now["options"].items():
        old = saved.get("options", {}).get(key)
        if old != value:
            return f"saved with --{key.replace('_', '-')} {old!r}, this run has {value!r}"
    if saved.get("model") != now["model"]:
        return f"saved for model {saved.get('model')}, this run uses {now['model']}"
    old_names = [s["name"] for s in saved.get("saes", [])]
    new_names = [s["name"] for s in now["saes"]]
    if old_names != new_names:
        return f"saved for SAEs {old_names}, this run has {new_names}"
    for old_sae, new_sae in zip(saved["saes"], now["saes"], strict=True):
        if old_sae != new_sae:
            return f"SAE {new_sae['name']}: its weights differ from those the state was saved with"
    return None


# -- the state of the main pass ------------------------------------------------------------
class MainPassState:
    """Saves and restores the main pass; owns the Ctrl-C / SIGTERM handling during it."""

    def __init__(self, path: Path, ident: dict[str, Any], units: list[Any], total_tokens: int,
                 every_minutes: float = 5.0) -> None:  # fmt: skip
        self.path, self.identity, self.units = path, ident, units
        self.total_tokens, self.every_s = total_tokens, every_minutes * 60
        self.batches_done = 0
        self.stop_requested = False
        self.last_save = time.monotonic()

    # -- called by the pass ----------------------------------------------------------------
    def start(self, totals: dict[str, int], resume: bool) -> int:
        """Fill `totals` (restored when resuming); returns the batches to skip."""
        totals.update(tokens_processed=0, tokens_counted=0, sequences=0)
        if resume:
            self._load(totals)
        elif self.path.exists():
            raise InputError(
                f"{self.path}: holds an interrupted diagnosis; pass --resume to continue it, "
                "or delete the file to start over"
            )
        self.last_save = time.monotonic()
        return self.batches_done

    def after_batch(self, totals: dict[str, int]) -> None:
        """A batch has been folded into every accumulator: a consistent point to save."""
        self.batches_done += 1
        if self.stop_requested:
            self.save(totals)
            raise DiagnoseInterrupted(self.path, totals["tokens_processed"], self.total_tokens)
        if self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s:
            self.save(totals)  # so that a kill -9 or a crash loses a few minutes at most

    def save(self, totals: dict[str, int]) -> Path:
        from safetensors.torch import save

        from saedoctor.atomic import atomic_write_bytes

        tensors: dict[str, torch.Tensor] = {}
        for i, unit in enumerate(self.units):
            if unit.suite is not None:  # a transcoder set has downstream sums only
                tensors |= {f"{i}.suite.{k}": v for k, v in unit.suite.state_dict().items()}
            tensors |= unit.downstream.state_dict(f"{i}.downstream.")
        meta = {"identity": self.identity, "totals": totals, "batches_done": self.batches_done}
        data = save({k: v.contiguous() for k, v in tensors.items()},
                    metadata={"format": FORMAT, "state": json.dumps(meta)})  # fmt: skip
        atomic_write_bytes(self.path, data)
        self.last_save = time.monotonic()
        return self.path

    def _load(self, totals: dict[str, int]) -> None:
        if not self.path.is_file():
            raise InputError(f"{self.path}: no interrupted diagnosis to resume (--resume)")
        meta, tensors = read_state(self.path)
        problem = _mismatch(meta["identity"], self.identity)
        if problem is not None:
            raise InputError(f"{self.path}: cannot resume: {problem}; rerun with the same "
                             "inputs, or delete the file to start over")  # fmt: skip
        try:
            for i, unit in enumerate(self.units):
                if unit.suite is not None:
                    unit.suite.load_state_dict(_prefixed(tensors, f"{i}.suite."))
                unit.downstream.load_state_dict(_prefixed(tensors, f"{i}.downstream."))
        except (KeyError, ValueError) as err:
            raise InputError(f"{self.path}: inconsistent diagnose state ({err})") from err
        totals.update({k: int(v) for k, v in meta["totals"].items()})
        self.batches_done = int(meta["batches_done"])

    # -- signals ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """First Ctrl-C or SIGTERM: finish the batch, save, stop. A second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            stderr_console.print(f"[bold]{what}[/]: finishing this batch and saving the state "
                                 "(Ctrl-C again to abort without saving)")  # fmt: skip

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        if header.get("format") != FORMAT:
            raise ValueError(f"expected format {FORMAT}")
        meta = json.loads(header["state"])
        meta["identity"], meta["totals"], meta["batches_done"]  # noqa: B018 - check keys
    except Exception as err:  # truncated, foreign or corrupt file: one line
        raise InputError(f"{path}: not a readable saedoctor diagnose state ({err}); delete it "
                         "to start over") from err  # fmt: skip
    return meta, tensors


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
