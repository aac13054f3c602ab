"""The machinery of the prescription benchmark: activation caches, arms (one training config
each), grouped training from the same initial weights, and measurement on held-out tokens
(benchmarks/prescriptions.py).

Every SAE is measured the same way: the main pass reads the cached `@test` activations
(`saedoctor diagnose --activations`, every metric but the downstream ones), and a second
`diagnose` with the model splices the SAE into it on the first `downstream` test tokens for
loss recovered / KL. The two are merged and graded and diagnosed by saedoctor's own rules
(`saedoctor.health.apply_health`), exactly as a report would be.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DOWNSTREAM_KEYS = ("loss_recovered", "kl_score", "ce_clean", "ce_sae", "ce_ablated")
RUN_KEYS = ("training_tokens", "batch_size", "gradient_accumulation")
HEARTBEAT_S = 10.0


def say(text: str) -> None:
    print(f"[prescriptions {time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextlib.contextmanager
def heartbeat(label: str) -> Iterator[None]:
    """A progress line every HEARTBEAT_S seconds while a long call runs."""
    done = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            say(f"{label}: {time.perf_counter() - start:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        say(f"{label}: done in {time.perf_counter() - start:.0f} s")


# -- activation caches -----------------------------------------------------------------------
def cache_file(cache: Path, corpus: str, layer: int) -> Path:
    return cache / f"L{layer}-{corpus.replace('@', '-')}.safetensors"


def cached_tokens(path: Path) -> int:
    if not path.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return int(f.get_slice("activations").get_shape()[0])


def cache_corpus(loaded: Any, cache: Path, corpus: str, targets: dict[int, int]) -> None:
    """Counted-token activations of `corpus` at blocks {layer}.hook_resid_post, `targets[layer]`
    tokens each, from as few forward passes as the targets allow (one per distinct target,
    each continuing where the last stopped). A cache that holds fewer tokens is extended from
    the sequence after its last one, so its first tokens stay the same."""
    todo = {
        layer: n
        for layer, n in targets.items()
        if cached_tokens(cache_file(cache, corpus, layer)) < n
    }
    if not todo:
        return
    held = min(cached_tokens(cache_file(cache, corpus, layer)) for layer in todo)
    chunks = {layer: [_held(cache, corpus, layer, held)] if held else [] for layer in todo}
    skip = _sequences(loaded, corpus, held)
    for target in sorted(set(todo.values())):
        layers = [layer for layer, n in todo.items() if n >= target]
        if target <= held:
            continue
        acts, read, skip = _read_sites(loaded, layers, corpus, target - held, skip)
        for layer in layers:
            chunks[layer].append(acts[layer])
        held += read
    from safetensors.torch import save_file

    cache.mkdir(parents=True, exist_ok=True)
    for layer, parts in chunks.items():
        tensor = torch.cat(parts)[: todo[layer]].contiguous()
        save_file({"activations": tensor}, str(cache_file(cache, corpus, layer)))
        say(f"cached {tensor.shape[0]:,} tokens of {corpus} at block {layer}")


def _held(cache: Path, corpus: str, layer: int, tokens: int) -> torch.Tensor:
    """The first `tokens` already cached."""
    return load_cached(cache, corpus, layer, tokens)


def _sequences(loaded: Any, corpus: str, tokens: int) -> int:
    """Sequences a cache of `tokens` counted tokens consumed (tokenizing only)."""
    if tokens == 0:
        return 0
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    seen, held = 0, 0
    for batch in token_batches(loaded.tokenizer, iter_documents(corpus), context=128,
                               batch_size=8, max_tokens=None, name=corpus):  # fmt: skip
        seen += int(batch.input_ids.shape[0])
        held += int(batch.counted.sum())
        if held >= tokens:
            return seen
    return seen


def _read_sites(loaded: Any, layers: list[int], corpus: str, tokens: int, skip: int
                ) -> tuple[dict[int, torch.Tensor], int, int]:  # fmt: skip
    """`tokens` counted tokens at each layer after `skip` sequences; (acts, tokens read,
    sequences consumed in all)."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.stream import site_batches
    from saedoctor.sae.site import Site

    sites = {layer: Site(layer, "resid_post") for layer in layers}
    seen = {"sequences": skip}

    def counted(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            seen["sequences"] += int(batch.input_ids.shape[0])
            yield batch

    batches = token_batches(loaded.tokenizer, iter_documents(corpus), context=128, batch_size=8,
                            max_tokens=None, skip_sequences=skip, name=corpus)  # fmt: skip
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    held, last = 0, time.perf_counter()
    for sb in site_batches(loaded.model, list(sites.values()), counted(batches)):
        for layer, site in sites.items():
            parts[layer].append(sb.acts[site].float())
        held += parts[layers[0]][-1].shape[0]
        if time.perf_counter() - last > HEARTBEAT_S:
            say(f"caching {corpus} at blocks {layers}: {held:,} / {tokens:,} tokens")
            last = time.perf_counter()
        if held >= tokens:
            break
    acts = {layer: torch.cat(p)[:tokens] for layer, p in parts.items()}
    return acts, min(held, tokens), seen["sequences"]


def load_cached(cache: Path, corpus: str, layer: int, tokens: int) -> torch.Tensor:
    from safetensors.torch import load_file

    acts = load_file(str(cache_file(cache, corpus, layer)))["activations"]
    if acts.shape[0] < tokens:
        raise SystemExit(f"{corpus} at block {layer}: {acts.shape[0]} cached tokens < {tokens}")
    return acts[:tokens]


# -- arms --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One training configuration (without its seed): a block, a corpus and the SAE fields."""

    layer: int
    dataset: str
    sae: tuple[tuple[str, Any], ...]
    run: tuple[tuple[str, Any], ...]

    @property
    def id(self) -> str:
        text = json.dumps([self.layer, self.dataset, self.sae, self.run], sort_keys=True)
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        return f"L{self.layer}-{self.dataset.split('@')[0]}-{digest}"

    def config(self, seed: int) -> Any:
        from saedoctor.train.config import TrainConfig, with_changes

        base = TrainConfig(layers=[self.layer], dataset=self.dataset, seed=seed,
                           checkpoint_every=0, checkpoint_minutes=0.0)  # fmt: skip
        return with_changes(base, {**dict(self.sae), **dict(self.run)}, self.id).validate()

    def describe(self) -> dict[str, Any]:
        return {"layer": self.layer, "dataset": self.dataset, **dict(self.sae), **dict(self.run)}


def make_arm(layer: int, dataset: str, fields: dict[str, Any]) -> Arm:
    """An arm from SAE fields and run fields (tokens, batching) in one dict."""
    from saedoctor.train.config import SAE_FIELDS, TrainConfig, with_changes

    cfg = with_changes(TrainConfig(layers=[layer], dataset=dataset), fields, "arm").validate()
    sae = tuple(sorted((k, _plain(getattr(cfg, k))) for k in SAE_FIELDS))
    run = tuple(sorted((k, getattr(cfg, k)) for k in RUN_KEYS))
    return Arm(layer, dataset, sae, run)


def _plain(value: Any) -> Any:
    return round(value, 12) if isinstance(value, float) else value


def changed(base: Arm, arm: Arm) -> dict[str, Any]:
    """The fields where `arm` differs from `base` (layer and dataset included)."""
    a, b = base.describe(), arm.describe()
    return {k: b[k] for k in b if a.get(k) != b[k]}


# -- training ----------------------------------------------------------------------------------
@dataclass
class Store:
    """Where trained SAEs and measurements live; anything already there is reused."""

    work: Path
    cache: Path
    trained: dict[tuple[str, int], Path] = field(default_factory=dict)

    def sae_dir(self, arm: Arm, seed: int) -> Path:
        return self.work / "saes" / f"seed{seed}" / arm.id

    def metrics_file(self, arm: Arm, seed: int, corpus: str, kind: str = "arm") -> Path:
        return self.work / "metrics" / corpus.replace("@", "-") / kind / f"seed{seed}" / \
            f"{arm.id}.json"  # fmt: skip

    def has_sae(self, arm: Arm, seed: int) -> bool:
        return (self.sae_dir(arm, seed) / "cfg.json").is_file()


def train_arms(store: Store, arms: list[Arm], seeds: list[int]) -> None:
    """Train every (arm, seed) not yet trained; arms that share a block, corpus, seed and run
    settings train in one pass over the same shuffled tokens."""
    groups: dict[tuple, list[Arm]] = {}
    for arm in dict.fromkeys(arms):
        for seed in seeds:
            if not store.has_sae(arm, seed):
                groups.setdefault((seed, arm.layer, arm.dataset, arm.run), []).append(arm)
    ordered = sorted(groups.items(), key=lambda kv: str(kv[0]))
    for i, ((seed, *_), group) in enumerate(ordered):
        _train_group(store, group, seed, f"group {i + 1}/{len(groups)}")


def _train_group(store: Store, group: list[Arm], seed: int, label: str) -> None:
    from saedoctor.sae.site import Site
    from saedoctor.train.trainer import SAESpec, train_on_activations

    layer, dataset = group[0].layer, group[0].dataset
    cfgs = [arm.config(seed) for arm in group]
    run_cfg = cfgs[0]
    acts = load_cached(store.cache, dataset, layer, run_cfg.training_tokens)
    site = Site(layer)
    specs = [SAESpec(arm.id, site, cfg) for arm, cfg in zip(group, cfgs, strict=True)]
    tmp = store.work / "training" / f"seed{seed}-L{layer}-{group[0].id}"
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"train {label}: seed {seed}, block {layer}, {dataset}, {len(group)} SAEs, "
        f"{run_cfg.training_tokens:,} tokens")  # fmt: skip
    result = train_on_activations(run_cfg, {site: acts}, tmp, specs=specs, corpus=dataset,
                                  on_step=_progress(label))  # fmt: skip
    for arm in group:
        final = store.sae_dir(arm, seed)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        shutil.move(str(result.sae_paths[arm.id]), final)
    shutil.rmtree(tmp, ignore_errors=True)


def _progress(label: str) -> Callable[[Any], None]:
    last = [time.perf_counter()]

    def on_step(trainer: Any) -> None:
        if time.perf_counter() - last[0] > HEARTBEAT_S:
            say(f"train {label}: step {trainer.step} / {trainer.total_steps}")
            last[0] = time.perf_counter()

    return on_step


# -- measurement -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eval:
    """How SAEs are measured: held-out corpus, main-pass tokens, downstream tokens, and the
    feature cards a baseline's diagnosis collects."""

    corpus: str
    tokens: int
    downstream: int
    cards: int = 64


def measure(store: Store, pairs: list[tuple[Arm, int]], ev: Eval, *, full: bool = False
            ) -> None:  # fmt: skip
    """Measure every (arm, seed) on `ev` not yet measured. `full`: a baseline's diagnosis
    (feature cards and the pre-flight checks a cache allows), else metrics only."""
    kind = "baseline" if full else "arm"
    todo = [(a, s) for a, s in dict.fromkeys(pairs)
            if not store.metrics_file(a, s, ev.corpus, kind).is_file()]  # fmt: skip
    if not todo:
        return
    main: dict[tuple[str, int], dict] = {}
    for layer in sorted({a.layer for a, _ in todo}):
        here = [(a, s) for a, s in todo if a.layer == layer]
        with heartbeat(f"diagnose {len(here)} SAEs at block {layer} on {ev.corpus} "
                       f"({ev.tokens:,} cached tokens{', full' if full else ''})"):  # fmt: skip
            doc = _diagnose(store, here, ev, layer=layer, full=full)
        for (a, s), entry in zip(here, doc["saes"], strict=True):
            main[(a.id, s)] = entry
        run = doc["run"]
        # A cached main pass does not know which corpus its activations came from; they are
        # `ev.corpus`, as a model-based diagnose would record (the mismatch rule reads it).
        run["corpus"] = run.get("corpus") or ev.corpus
    with heartbeat(f"loss recovered of {len(todo)} SAEs on {ev.downstream:,} tokens of "
                   f"{ev.corpus}"):  # fmt: skip
        down = _diagnose(store, todo, ev, layer=None, full=False)
    for (a, s), entry in zip(todo, down["saes"], strict=True):
        merged = _merge(main[(a.id, s)], entry)
        document = _graded({"run": run, "saes": [merged]})
        path = store.metrics_file(a, s, ev.corpus, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, default=str))


def _diagnose(store: Store, pairs: list[tuple[Arm, int]], ev: Eval, *, layer: int | None,
              full: bool) -> dict[str, Any]:  # fmt: skip
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    saes = [str(store.sae_dir(a, s)) for a, s in pairs]
    if layer is not None:  # the main pass, on the cache
        opts = DiagnoseOptions(saes=saes, corpus=ev.corpus, tokens=ev.tokens, quiet=True,
                               activations=str(cache_file(store.cache, ev.corpus, layer)),
                               preflight="all" if full else "none",
                               cards=ev.cards if full else 0, downstream=False)  # fmt: skip
    else:  # loss recovered / KL, with the model
        batch = min(8, max(1, ev.downstream // 128))  # no more tokens than asked for
        opts = DiagnoseOptions(saes=saes, corpus=ev.corpus, tokens=ev.downstream, quiet=True,
                               downstream_tokens=ev.downstream, preflight="none", cards=0,
                               batch_size=batch, explain_tokens=ev.downstream)  # fmt: skip
    return diagnose(opts)


def _merge(main: dict[str, Any], down: dict[str, Any]) -> dict[str, Any]:
    """The main pass's entry with the downstream pass's loss recovered / KL (and intervals)."""
    merged = json.loads(json.dumps(main, default=str))
    metrics = merged.setdefault("metrics", {})
    intervals = merged.setdefault("intervals", {}).setdefault("metrics", {})
    down_intervals = ((down.get("intervals") or {}).get("metrics")) or {}
    for key in DOWNSTREAM_KEYS:
        metrics[key] = (down.get("metrics") or {}).get(key)
        if key in down_intervals:
            intervals[key] = down_intervals[key]
    metrics["downstream_tokens"] = (down.get("metrics") or {}).get("tokens_seen")
    return measured_downstream(merged)


def measured_downstream(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without the main pass's "not measured" mark on the downstream metrics the
    second pass measured (otherwise the grader would fall back on variance explained)."""
    marks = entry.get("not_measured")
    metrics = entry.get("metrics") or {}
    if isinstance(marks, dict):
        for key in DOWNSTREAM_KEYS:
            if metrics.get(key) is not None:
                marks.pop(key, None)
    return entry


def _graded(document: dict[str, Any]) -> dict[str, Any]:
    from saedoctor.health.apply import apply_health
    from saedoctor.health.policy import load_policy

    return apply_health(document, load_policy())


def load_document(store: Store, arm: Arm, seed: int, corpus: str, kind: str = "arm"
                  ) -> dict[str, Any]:  # fmt: skip
    """A stored measurement, graded and diagnosed again by the current rules (a copy)."""
    return json.loads(_load(str(store.metrics_file(arm, seed, corpus, kind))))


@functools.lru_cache(maxsize=4096)
def _load(path: str) -> str:
    document = json.loads(Path(path).read_text())
    document["saes"] = [measured_downstream(e) for e in document["saes"]]
    return json.dumps(_graded(document), default=str)


def load_entry(store: Store, arm: Arm, seed: int, corpus: str, kind: str = "arm"
               ) -> dict[str, Any]:  # fmt: skip
    return load_document(store, arm, seed, corpus, kind)["saes"][0]
