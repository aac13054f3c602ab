"""The training loop: several SAEs (one per layer, or several per site) fed from one
activation stream, a live health monitor, atomic checkpoints, resume and Ctrl-C.

    result = train(TrainConfig(layers=[4, 10, 16]), "runs/sweep")    # model + corpus
    result = train(None, "runs/sweep", resume=True)                   # continue after Ctrl-C
    result = train_on_activations(cfg, acts, "runs/x")                # in-memory activations

A resumed run is bit-identical to an uninterrupted one on CPU: the checkpoint holds every
parameter, the Adam state, the schedule position, the running statistics, the monitor's
window and the data position (see `data.py`), and all randomness is seeded per pool / step.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console, Group
from rich.live import Live

from saedoctor.activations.moments import LazyMoments
from saedoctor.distributed import World
from saedoctor.errors import InputError
from saedoctor.progress import stderr_console
from saedoctor.sae.arch import TOPK_ARCHITECTURES
from saedoctor.sae.model import SAE, Dictionary
from saedoctor.sae.site import Site
from saedoctor.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from saedoctor.train.clt_trainer import TrainableCLT, clt_sites
from saedoctor.train.config import (
    TRANSCODER_SITES,
    TrainConfig,
    check_against_model,
    d_sae_for,
)
from saedoctor.train.data import ModelSource, Pool, Position, Source, TensorSource, micro_batches
from saedoctor.train.monitor import (
    MIN_WINDOW_TOKENS,
    HealthMonitor,
    JsonlLogger,
    MetricLogger,
    TensorBoardLogger,
    WandbLogger,
)
from saedoctor.train.outliers import warn_outliers
from saedoctor.train.ranks import TrainRanks, no_interrupt_mid_pool, train_ranks
from saedoctor.train.sae_trainer import TrainableSAE
from saedoctor.version import __version__

SUMMARY_FILE = "train.json"
CIRCUIT_TRACER_DIR = "circuit_tracer"
METRICS_FILE = "metrics.jsonl"


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the checkpoint is written."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


@dataclass
class SAESpec:
    """One dictionary to train: its output name, the site it reads, its (layer-resolved)
    config, and for a transcoder the site it reconstructs."""

    name: str
    site: Site
    cfg: TrainConfig
    output_site: Site | None = None  # None: `site` (an SAE)

    @property
    def target_site(self) -> Site:
        return self.output_site or self.site

    @property
    def sites(self) -> list[Site]:
        """Every site the forward pass must read for this dictionary."""
        if self.cfg.kind == "clt":
            return clt_sites(self.cfg.layers)
        return [self.site] if self.target_site == self.site else [self.site, self.target_site]

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "layer": self.site.layer, "kind": self.site.kind,
             "config": self.cfg.to_dict()}  # fmt: skip
        if self.output_site is not None:
            d["output"] = [self.output_site.layer, self.output_site.kind]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAESpec:
        out = d.get("output")
        return cls(d["name"], Site(int(d["layer"]), d["kind"]), TrainConfig(**d["config"]),
                   Site(int(out[0]), out[1]) if out else None)  # fmt: skip


@dataclass
class TrainResult:
    out_dir: Path | None
    sae_paths: dict[str, Path]
    saes: dict[str, SAE]
    history: list[dict[str, Any]]
    warnings: list[str]
    steps: int
    tokens: int
    wall_s: float
    config: TrainConfig
    summary: dict[str, Any] = field(default_factory=dict)


def sae_name(cfg: TrainConfig, site: Site) -> str:
    what, where = site.kind, f"L{site.layer}"
    if cfg.kind == "transcoder":
        what = "skip-transcoder" if cfg.skip else "transcoder"
    if cfg.kind == "clt":
        what, where = "clt", f"L{min(cfg.layers)}-{max(cfg.layers)}"
    name = f"{where}-{what}-{cfg.architecture}-x{cfg.expansion_factor:g}"
    return name + (f"-k{cfg.top_k}" if cfg.architecture in TOPK_ARCHITECTURES else "")


def specs_for(cfg: TrainConfig) -> list[SAESpec]:
    if cfg.kind == "clt":  # one dictionary over every block
        site = Site(min(cfg.layers), cfg.site)
        return [SAESpec(sae_name(cfg, site), site, cfg, Site(site.layer, TRANSCODER_SITES[1]))]
    specs = []
    for layer in cfg.layers:
        sub, site = cfg.for_layer(layer), Site(layer, cfg.site)
        output = Site(layer, TRANSCODER_SITES[1]) if cfg.kind == "transcoder" else None
        specs.append(SAESpec(sae_name(sub, site), site, sub, output))
    return specs


def site_width(source: Source, site: Site) -> int:
    """Width of `site`'s activations in `source` (one width for every site of a model)."""
    return getattr(source, "widths", {}).get(site, source.d_in)


def make_trainable(spec: SAESpec, source: Source, total_steps: int,
                   device: str) -> TrainableSAE | TrainableCLT:  # fmt: skip
    d_in, d_out = site_width(source, spec.site), site_width(source, spec.target_site)
    if spec.cfg.kind == "clt":
        return TrainableCLT(spec.name, spec.cfg, d_in, total_steps, device, d_out=d_out)
    return TrainableSAE(spec.name, spec.site, spec.cfg, d_in, total_steps, device,
                        output_site=spec.output_site, d_out=d_out)  # fmt: skip


def monitor_widths(spec: SAESpec, source: Source) -> tuple[int, int]:
    """(target width, dictionary width) the health monitor sees: a CLT's blocks side by side."""
    blocks = len(spec.cfg.layers) if spec.cfg.kind == "clt" else 1
    d_sae = d_sae_for(spec.cfg, site_width(source, spec.site))
    return blocks * site_width(source, spec.target_site), blocks * d_sae


@dataclass
class _Progress:
    step: int = 0
    pool_index: int = 0
    pool_start: Position = field(default_factory=Position)
    pool_end: Position | None = None
    used: int = 0  # micro-batches of the current pool already trained on
    pool_size: int = -1
    pool_target: int = 0  # the token target the current pool was filled to


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        specs: list[SAESpec],
        source: Source,
        out_dir: Path | None,
        *,
        model_name: str | None = None,
        console: Console | None = None,
        quiet: bool = False,
        on_step: Callable[[Trainer], None] | None = None,
        loggers: list[MetricLogger] | None = None,
        ranks: TrainRanks | None = None,
    ) -> None:
        if not specs:
            raise InputError("nothing to train: expected at least one SAE")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InputError(f"SAE names must be distinct, got {names}")
        self.cfg, self.specs, self.source = cfg, specs, source
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_name = model_name
        self.console = console or stderr_console  # the progress bar's console: one live display
        self.quiet, self.on_step = quiet, on_step
        self.total_steps = cfg.total_steps
        self.ranks = ranks or TrainRanks(World())
        self.saes = {s.name: make_trainable(s, source, self.total_steps, cfg.device)
                     for i, s in enumerate(specs) if self.ranks.trains(i)}  # fmt: skip
        for sae in self.saes.values():
            sae.reducer = self.ranks.reducer()
        every = cfg.monitor_every or max(1, -(-MIN_WINDOW_TOKENS // cfg.tokens_per_step))
        live = not quiet and self.console.is_terminal
        self.loggers = list(loggers or [])
        self.monitor = HealthMonitor(  # every SAE's: rank 0 folds the other ranks' windows in
            {s.name: monitor_widths(s, source) for s in specs}, every,
            always_on=cfg.always_on_threshold, console=self.console, live=live, quiet=quiet,
            loggers=self.loggers,
        )  # fmt: skip
        self.progress = _Progress()
        self.stop_requested = False
        self.wall_before = 0.0  # seconds spent before a resume
        self.wandb_id: str | None = None

    # -- public ----------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def tokens(self) -> int:
        return self.progress.step * self.cfg.tokens_per_step

    def request_stop(self) -> None:
        """What Ctrl-C does: finish the current step, save a checkpoint, stop."""
        self.stop_requested = True

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_FILE if self.out_dir is not None else None

    def resume_from(self, state: dict[str, Any], path: Path) -> None:
        saved = [s["name"] for s in state["specs"]]
        names = [s.name for s in self.specs]
        if saved != names:
            raise InputError(f"{path}: checkpoint trains {saved}, this run {names}")
        for name, sae in self.saes.items():
            sae.load_state_dict(state["saes"][name])
        self.monitor.load_state_dict(state["monitor"])
        if not self.ranks.is_main:  # rank 0 holds the saved windows; the others start empty
            for name in self.monitor.windows:
                self.monitor.reset_window(name)
        p = state["progress"]
        end = p.get("pool_end")
        self.progress = _Progress(
            int(p["step"]), int(p["pool_index"]), Position(*p["pool_start"]),
            Position(*end) if end is not None else None, int(p["used"]), int(p["pool_size"]),
            int(p["pool_target"]),
        )  # fmt: skip
        torch.set_rng_state(state["rng"]["torch"])
        self.wall_before = float(state.get("wall_s", 0.0))
        self.wandb_id = state.get("wandb_id")

    def run(self) -> TrainResult:
        self._run_start = self._last_checkpoint = start = time.perf_counter()
        with self._sigint(), self._display() as refresh:
            self._loop(refresh)
            if self.progress.step:
                self._fold_windows()
                if any(w.micro for w in self.monitor.windows.values()):
                    self.monitor.report(self.step, self.tokens, self._lrs())
                    refresh()
        wall = self.wall_before + time.perf_counter() - start
        return self._finish(wall)

    # -- loop ------------------------------------------------------------------------------
    def _loop(self, refresh: Callable[[], None]) -> None:
        cfg, prog = self.cfg, self.progress
        if prog.step >= self.total_steps:
            return
        start, index, skip = prog.pool_start, prog.pool_index, prog.used
        if prog.pool_end is not None and prog.used >= prog.pool_size >= 0:
            start, index, skip = prog.pool_end, prog.pool_index + 1, 0
        self.micro = micro = 0
        last = time.perf_counter()
        if hasattr(self.source, "interrupted"):
            # between optimizer steps only: mid-accumulation state is not checkpointed
            self.source.interrupted = no_interrupt_mid_pool(
                self.ranks, lambda: self.stop_requested and self.micro == 0
            )
        self._targets = {prog.pool_index: prog.pool_target} if prog.pool_target else {}
        self._micro_done = prog.step * cfg.gradient_accumulation
        self._epoch = start.epoch
        for pool in self.source.pools(start, index, self._pool_target):
            if micro == 0 and self._stop():
                break
            if pool.start.epoch > self._epoch:
                self._epoch = pool.start.epoch
                if self.ranks.is_main:  # one line, not one per rank
                    self.console.print(
                        f"{getattr(self.source, 'corpus', 'the data')}: all read after "
                        f"{self.tokens:,} training tokens; reading it again (pass "
                        f"{self._epoch + 1})", highlight=False)  # fmt: skip
            self._initialise(pool)
            batches = micro_batches(pool, cfg.micro_batch_tokens, cfg.seed)
            for j in range(skip, len(batches)):
                self._micro(pool, batches[j])
                self._micro_done += 1
                self.micro = micro = micro + 1
                if micro < cfg.gradient_accumulation:
                    continue
                self.micro = micro = 0
                self._optimizer_step(pool, j + 1, len(batches))
                if time.perf_counter() - last > 0.5 or self.monitor.due(prog.step):
                    refresh()
                    last = time.perf_counter()
                if prog.step >= self.total_steps:
                    return
                # one agreement per step: under torchrun checkpoints and stops are collective
                self.stop_requested, timer_due = self.ranks.any(self.stop_requested,
                                                                self._timer_due())  # fmt: skip
                if self.stop_requested:
                    path = self._checkpoint()
                    raise TrainingInterrupted(path, prog.step)
                if timer_due or (cfg.checkpoint_every and prog.step % cfg.checkpoint_every == 0):
                    self._checkpoint()
            skip = 0
        if self._stop():  # Ctrl-C while the next pool was being read
            raise TrainingInterrupted(self._checkpoint(), prog.step)

    def _stop(self) -> bool:
        """Whether to stop now: under torchrun, every rank stops if any rank was asked to."""
        [self.stop_requested] = self.ranks.any(self.stop_requested)
        return self.stop_requested

    def _timer_due(self) -> bool:
        """This rank's clock says checkpoint (under torchrun, any rank's clock decides)."""
        minutes = self.cfg.checkpoint_minutes
        return bool(minutes) and time.perf_counter() - self._last_checkpoint > 60 * minutes

    def _pool_target(self, index: int) -> int:
        """Tokens pool `index` is filled to: `shuffle_tokens`, or what the run still needs.

        Asked when the pool starts filling (all earlier pools consumed), so it depends only on
        the step reached; a resumed run reuses the saved target of the pool it restarts in.
        """
        if index not in self._targets:
            cfg = self.cfg
            total = self.total_steps * cfg.gradient_accumulation
            remaining = max(1, total - self._micro_done) * cfg.micro_batch_tokens
            self._targets[index] = min(cfg.shuffle_tokens, remaining)
        return self._targets[index]

    def _initialise(self, pool: Pool) -> None:
        todo = [sae for sae in self.saes.values() if not sae.initialised]
        stats = LazyMoments(pool.acts)  # one pass per site, shared by the check and every SAE
        if todo and self.ranks.is_main:  # before the first step: activation outliers
            warn_outliers(self.console, todo, stats)
        for sae in todo:
            sae.initialise_from(pool.acts, stats)

    def _micro(self, pool: Pool, rows: torch.Tensor) -> None:
        step, scale = self.progress.step, 1.0 / self.cfg.gradient_accumulation
        rows = self.ranks.share(rows)
        for name, sae in self.saes.items():
            # the monitor judges the reconstruction of the target (an SAE's is its input)
            target, out = sae.train_rows(pool.acts, rows, step, scale)
            self.monitor.update(name, target.to(out.x_hat.device), out.x_hat, out.codes,
                                out.losses)  # fmt: skip

    def _optimizer_step(self, pool: Pool, used: int, size: int) -> None:
        prog = self.progress
        for sae in self.saes.values():
            self.ranks.average_grads(list(sae.params.values()))
        self.lrs = {name: sae.optimizer_step(prog.step) for name, sae in self.saes.items()}
        prog.step += 1
        prog.pool_index, prog.pool_start, prog.used, prog.pool_size = (
            pool.index, pool.start, used, size)  # fmt: skip
        prog.pool_end = pool.end
        prog.pool_target = self._targets.get(pool.index, 0)
        if self.monitor.due(prog.step):
            self._fold_windows()
            if self.ranks.is_main:
                self.monitor.report(prog.step, self.tokens, self.lrs)
        if self.on_step is not None:
            self.on_step(self)

    def _lrs(self) -> dict[str, float]:
        return getattr(self, "lrs", {})

    def _fold_windows(self) -> None:
        """Under torchrun: every rank's monitor windows into rank 0's (the others restart)."""
        if not self.ranks.active:
            return
        mine = {n: self.monitor.window_state(n) for n in self.saes
                if self.monitor.windows[n].micro}  # fmt: skip
        if not self.ranks.is_main:
            for name in mine:
                self.monitor.reset_window(name)
        shares = self.ranks.gather_to_main(mine if not self.ranks.is_main else {})
        for share in shares or []:
            for name, state in share.items():
                self.monitor.merge_window(name, state)

    # -- checkpoints -------------------------------------------------------------------
    def state(self, wall_s: float = 0.0) -> dict[str, Any]:
        p = self.progress
        saes = {name: sae.state_dict() for name, sae in self.saes.items()}
        if self.ranks.distribute_layers and self.ranks.active:  # each SAE from its rank
            for share in self.ranks.gather_to_main(saes if not self.ranks.is_main else {}) or []:
                saes.update(share)
        return {
            "version": __version__,
            "config_json": json.dumps(self.cfg.to_dict()),
            "specs": [s.to_dict() for s in self.specs],
            "model_name": self.model_name,
            "saes": {s.name: saes[s.name] for s in self.specs if s.name in saes},
            "monitor": self.monitor.state_dict(),
            "progress": {
                "step": p.step,
                "pool_index": p.pool_index,
                "pool_start": [p.pool_start.epoch, p.pool_start.sequence],
                "pool_end": None if p.pool_end is None else [p.pool_end.epoch, p.pool_end.sequence],
                "used": p.used,
                "pool_size": p.pool_size,
                "pool_target": p.pool_target,
            },  # fmt: skip
            "rng": {"torch": torch.get_rng_state()},
            "wall_s": wall_s,
            "wandb_id": self.wandb_id,
        }

    def _checkpoint(self) -> Path:
        if self.checkpoint_path is None:
            raise InputError("cannot checkpoint: this run has no output directory")
        elapsed = time.perf_counter() - getattr(self, "_run_start", time.perf_counter())
        self._fold_windows()  # rank 0 saves the whole window; resumed, the others start empty
        state = self.state(self.wall_before + elapsed)
        if not self.ranks.is_main:
            self._last_checkpoint = time.perf_counter()
            return self.checkpoint_path
        path = save_checkpoint(self.checkpoint_path, state)
        self._last_checkpoint = time.perf_counter()
        self.console.print(f"checkpoint: step {self.step} → {path}", highlight=False)
        return path

    # -- Ctrl-C, display -----------------------------------------------------------------
    @contextlib.contextmanager
    def _sigint(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            if self.ranks.is_main:
                self.console.print(
                    f"[bold]{what}[/]: finishing this step and saving a "
                    "checkpoint (Ctrl-C again to abort without saving)"
                )

        # SIGTERM (a scheduler's preemption, `kill`) is treated like Ctrl-C: save, then stop.
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @contextlib.contextmanager
    def _display(self) -> Iterator[Callable[[], None]]:
        from saedoctor.progress import token_progress

        progress = token_progress(self.quiet)
        total = self.total_steps * self.cfg.tokens_per_step
        task = progress.add_task(f"train {len(self.saes)} SAE(s)", total=total)

        def advance() -> None:
            progress.update(task, completed=self.tokens)

        if not self.monitor.live:
            with progress:
                yield advance
            return
        with Live(Group(progress, self.monitor.table()), console=self.console,
                  refresh_per_second=4) as live:  # fmt: skip

            def refresh() -> None:
                advance()
                live.update(Group(progress, self.monitor.table()))

            yield refresh

    # -- output ----------------------------------------------------------------------------
    def _finish(self, wall: float) -> TrainResult:
        tokens = self.tokens
        if self.ranks.active:  # the owners write their SAEs with rank 0's health figures
            self.monitor.latest = self.ranks.from_main(self.monitor.latest)
        saes, paths = {}, {}
        for i, spec in enumerate(self.specs):
            if self.ranks.owner(i) != self.ranks.world.rank:
                continue
            trained = self.saes[spec.name]
            sae = trained.export(self.model_name, self.metadata(spec, tokens))
            saes[spec.name] = sae
            if self.out_dir is not None:
                paths[spec.name] = trained.save(sae, self.out_dir / spec.name)
        for share in (self.ranks.gather_to_main(paths) or [])[1:]:
            paths.update(share)
        summary = {
            "saedoctor": __version__, "config": self.cfg.to_dict(),
            "saes": {s.name: {"path": str(paths.get(s.name, "")), "layer": s.site.layer,
                              "site": s.site.kind, "config": s.cfg.to_dict(),
                              "final": self.monitor.latest.get(s.name),
                              **({"output_site": s.output_site.kind} if s.output_site else {}),
                              **({"layers": s.cfg.layers} if s.cfg.kind == "clt" else {})}
                     for s in self.specs},
            "steps": self.step, "tokens": tokens, "wall_time_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
            "warnings": self.monitor.warnings, "history": self.monitor.history,
        }  # fmt: skip
        if self.ranks.active:
            summary["ranks"] = {
                "world_size": self.ranks.world.size,
                "mode": "layers" if self.ranks.distribute_layers else "data",
            }
        transcoders = self._gather_transcoders(saes)
        if transcoders and self.out_dir is not None and self.ranks.is_main:
            summary["circuit_tracer"] = self._circuit_tracer(transcoders)
        if self.out_dir is not None and self.ranks.is_main:
            from saedoctor.atomic import atomic_write_json

            atomic_write_json(self.out_dir / SUMMARY_FILE, summary)
        for logger in self.loggers:
            logger.close()
        return TrainResult(self.out_dir, paths, saes, self.monitor.history,
                           self.monitor.warnings, self.step, tokens, wall, self.cfg,
                           summary)  # fmt: skip

    def _circuit_tracer(self, transcoders: list[SAE]) -> dict[str, str]:
        assert self.out_dir is not None
        written = write_circuit_tracer(transcoders, self.out_dir)
        if "skipped" in written and not self.quiet:
            self.console.print(f"no circuit-tracer copy: {written['skipped']}", highlight=False)
        return written

    def _gather_transcoders(self, saes: dict[str, SAE]) -> list[SAE]:
        """Every trained transcoder (from every rank under --distribute-layers), on rank 0."""
        if not any(s.output_site is not None for s in self.specs):
            return []
        mine = {
            n: sae for n, sae in saes.items() if isinstance(sae, Dictionary) and sae.is_transcoder
        }  # a CLT is saved whole
        if self.ranks.distribute_layers and self.ranks.active:
            for share in self.ranks.gather_to_main(mine if not self.ranks.is_main else {}) or []:
                mine.update(share)
        return sorted(mine.values(), key=lambda sae: sae.site.layer)

    def metadata(self, spec: SAESpec, tokens: int) -> dict[str, Any]:
        cfg, trained = spec.cfg, self.saes[spec.name]
        trainer = {"name": "saedoctor.train", "version": __version__, **cfg.to_dict()}
        trainer.pop("layers", None)
        trainer.pop("layer_overrides", None)
        trainer.update(layer=spec.site.layer, site=spec.site.kind, **trained.trainer_fields())
        final = self.monitor.latest.get(spec.name) or {}
        health = {k: final.get(k) for k in ("step", "window_tokens", "always_on_count",
                                             "always_on_features", "dead_pct", "l0",
                                             "variance_explained")}  # fmt: skip
        return {
            "training_corpus": getattr(self.source, "corpus", None),
            "training_tokens": tokens, "context_size": cfg.context,
            "trainer": trainer, "training_health": health,
        }  # fmt: skip


def write_circuit_tracer(transcoders: list[SAE], out_dir: Path) -> dict[str, str]:
    """The run's transcoders as one circuit-tracer set in `out_dir/circuit_tracer`:
    {"path": ...}, or {"skipped": why} when that layout cannot hold them (circuit-tracer
    has no top-k: a topk transcoder would be read as ReLU)."""
    from saedoctor.sae import loaders

    save = getattr(loaders, "save_circuit_tracer", None)
    if save is None:
        return {"skipped": "this saedoctor cannot write circuit-tracer sets"}
    try:
        return {"path": str(save(transcoders, out_dir / CIRCUIT_TRACER_DIR))}
    except InputError as e:  # the dictionaries are saved already; only this copy is missing
        return {"skipped": str(e)}


# -- entry points ------------------------------------------------------------------------
def _loggers(cfg: TrainConfig, out_dir: Path | None, run_name: str,
             wandb_id: str | None) -> list[MetricLogger]:  # fmt: skip
    loggers: list[MetricLogger] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(JsonlLogger(out_dir / METRICS_FILE))
    if "tensorboard" in cfg.log_to:
        loggers.append(TensorBoardLogger((out_dir or Path(".")) / "tensorboard"))
    if "wandb" in cfg.log_to:
        loggers.append(WandbLogger(cfg.wandb_project, run_name, cfg.to_dict(), wandb_id,
                                   out_dir or Path(".")))  # fmt: skip
    return loggers


def _prepare_out(out_dir: Path, resume: bool) -> None:
    if resume:
        return
    if (out_dir / CHECKPOINT_FILE).exists():
        raise InputError(
            f"{out_dir}: holds an unfinished run's checkpoint; pass --resume to continue it, "
            "or choose another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)


def run_trainer(trainer: Trainer, out_dir: Path | None, state: dict[str, Any] | None,
                keep_checkpoint: bool) -> TrainResult:  # fmt: skip
    if state is not None and out_dir is not None:
        trainer.resume_from(state, out_dir / CHECKPOINT_FILE)
    result = trainer.run()
    if out_dir is not None and not keep_checkpoint:
        (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return result


def config_from_checkpoint(out_dir: Path) -> TrainConfig:
    state = load_checkpoint(Path(out_dir) / CHECKPOINT_FILE)
    return TrainConfig(**json.loads(state["config_json"]))


def train(
    cfg: TrainConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    specs: list[SAESpec] | None = None,
    quiet: bool = False,
    console: Console | None = None,
    on_step: Callable[[Trainer], None] | None = None,
    keep_checkpoint: bool = False,
    loaded_model: Any = None,
    distribute_layers: bool = False,
) -> TrainResult:
    """Train SAEs on a language model's activations (`cfg.model`, `cfg.dataset`).

    Under torchrun the ranks share the work (train/ranks.py): data parallel, or with
    `distribute_layers` one rank per SAE; rank 0 writes the summary and checkpoints."""
    from saedoctor.activations.model import load_model

    out = Path(out_dir)
    saved_specs, state = None, None
    if resume:
        state = load_checkpoint(out / CHECKPOINT_FILE)
        cfg = TrainConfig(**json.loads(state["config_json"]))
        saved_specs = [SAESpec.from_dict(s) for s in state["specs"]]
    if cfg is None:
        raise InputError("train: expected a config (or resume=True with a checkpoint)")
    cfg.validate()
    specs = saved_specs or specs or specs_for(cfg)
    ranks = train_ranks(cfg.device, distribute_layers, len(specs), cfg.micro_batch_tokens)
    quiet = quiet or not ranks.is_main
    _prepare_out(out, resume)
    loaded = loaded_model or load_model(cfg.model, device=cfg.device, dtype=cfg.model_dtype)
    for spec in specs:
        spec.cfg.validate()
        check_against_model(spec.cfg, loaded.n_layers, loaded.d_model, loaded.name)
    sites = sorted({site for s in specs for site in s.sites})
    source = ModelSource(
        loaded, sites, cfg.dataset, text_field=cfg.text_field,
        context=cfg.context, batch_size=cfg.batch_size, shuffle_tokens=cfg.shuffle_tokens,
        include_special=cfg.include_special, device=cfg.device,
    )  # fmt: skip
    source.ranks = ranks
    source.keep = {site for i, s in enumerate(specs) if ranks.trains(i) for site in s.sites}
    console = console or stderr_console
    wandb_id = state.get("wandb_id") if state else None
    loggers = _loggers(cfg, out, out.name, wandb_id) if ranks.is_main else []
    trainer = Trainer(cfg, specs, source, out, model_name=loaded.name, console=console,
                      quiet=quiet, on_step=on_step, loggers=loggers, ranks=ranks)  # fmt: skip
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            trainer.wandb_id = logger.run_id
    return run_trainer(trainer, out, state, keep_checkpoint)


def train_on_activations(
    cfg: TrainConfig,
    acts: torch.Tensor | dict[Site, torch.Tensor],
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    specs: list[SAESpec] | None = None,
    quiet: bool = True,
    console: Console | None = None,
    on_step: Callable[[Trainer], None] | None = None,
    keep_checkpoint: bool = False,
    corpus: str | None = None,
) -> TrainResult:
    """Train on in-memory activations `[N, d]` (the site is `cfg`'s first layer) or
    `{site: [N, d]}` (a transcoder's holds its mlp_in and mlp_out, the same tokens in the same
    order); the same loop, monitor and checkpoints as `train`. `corpus` names where they
    came from (recorded as the SAEs' training_corpus)."""
    cfg.validate()
    if isinstance(acts, torch.Tensor):
        if cfg.kind != "sae":
            raise InputError("a transcoder trains on {Site(L, 'mlp_in'): x, "
                             "Site(L, 'mlp_out'): y}, not one tensor")  # fmt: skip
        acts = {Site(cfg.layers[0], cfg.site): acts}
    out = Path(out_dir) if out_dir is not None else None
    state = None
    if out is not None:
        _prepare_out(out, resume)
        state = load_checkpoint(out / CHECKPOINT_FILE) if resume else None
    source = TensorSource(acts, cfg.shuffle_tokens, corpus=corpus)
    specs = specs or specs_for(cfg)
    missing = [s.name for s in specs if any(site not in acts for site in s.sites)]
    if missing:
        raise InputError(f"no activations for the site(s) of {', '.join(missing)}")
    loggers = _loggers(cfg, out, out.name if out else "train", None) if out else []
    trainer = Trainer(cfg, specs, source, out, console=console, quiet=quiet, on_step=on_step,
                      loggers=loggers)  # fmt: skip
    return run_trainer(trainer, out, state, keep_checkpoint)
