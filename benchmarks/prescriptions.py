"""Does each diagnosis rule's prescription fix what it diagnosed? Every rule, every change, 3 seeds.

    .venv/bin/python benchmarks/prescriptions.py [--seeds 3] [--train-tokens 24000]
        [--eval-tokens 40000] [--downstream-tokens 512] [--work sae_runs/prescriptions]
        [--threads 0] [--quick] [--out DIR]

For each rule that prescribes a training change (benchmarks/_rx_cases.py: always-on, dead
features, L0 too high / too low, poor reconstruction, late-layer pattern, high absorption,
training-data mismatch) a realistic bad baseline is trained on the embedded default's
activations (cached once per block and corpus), measured on held-out `@test` tokens and
diagnosed by saedoctor's own rules. Each training change the rule prescribed is then trained
alone, the rule's changes together, and everything `saedoctor train --from-prescription`
would apply, from the same initial weights per seed on the same tokens, and measured the
same way. Per rule and change the result holds the targeted metric's mean over seeds with a
95 % t interval, the paired (same-seed) difference with its interval and a verdict
(benchmarks/_verdicts.py). The guide's recommendations are trained the same way (`guide`),
with its data-mismatch story reproduced.

Writes `<out>/prescriptions.json` (`verdicts` keyed by rule id and prescription field,
`arms` with every seed's metrics, `cases`, `guide`, `mismatch_story`) and
`<out>/prescriptions.md`. SAEs, caches and measurements go under `--work`; a rerun reuses
every SAE and measurement already there (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _results  # noqa: E402
import _rx_cases as C  # noqa: E402
import _verdicts as V  # noqa: E402
from _rx_run import (  # noqa: E402
    Arm,
    Eval,
    Store,
    cache_corpus,
    cache_file,
    cached_tokens,
    changed,
    heartbeat,
    load_document,
    load_entry,
    make_arm,
    measure,
    say,
    train_arms,
)

NAME = "prescriptions"
# Per-feature arrays and cards: no rule reads them, and they would make the result file large.
BULKY_ENTRY_KEYS = ("feature_density", "feature_mean_activation", "cards", "diagnoses",
                    "prescriptions")
RUN_KEYS_RULES_READ = ("corpus", "compare_corpus", "tokens_counted", "model", "options")
NOT_TRAINING = ("eval_tokens", "eval_site", "eval_input_scale", "eval_include_special")


@dataclass(frozen=True)
class Budget:
    seeds: int
    train: int
    eval: int
    downstream: int
    compare: int


FULL = Budget(seeds=3, train=24_000, eval=40_000, downstream=512, compare=16_000)
QUICK = Budget(seeds=3, train=2048, eval=1024, downstream=64, compare=1024)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--train-tokens", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=None)
    ap.add_argument("--downstream-tokens", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("sae_runs/prescriptions"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _results.add_arguments(ap)
    return ap.parse_args()


def budget_of(args: argparse.Namespace) -> Budget:
    b = QUICK if args.quick else FULL
    return Budget(seeds=args.seeds or b.seeds, train=args.train_tokens or b.train,
                  eval=args.eval_tokens or b.eval,
                  downstream=args.downstream_tokens or b.downstream,
                  compare=min(b.compare, args.eval_tokens or b.eval))  # fmt: skip


# -- baselines and their diagnoses ------------------------------------------------------------
def baseline_arms(case: C.Case, b: Budget) -> dict[int, Arm]:
    tokens = b.train * case.train_scale
    return {layer: make_arm(layer, case.dataset, {**case.config, "training_tokens": tokens})
            for layer in case.layers}  # fmt: skip


def diagnose_case(store: Store, case: C.Case, base: dict[int, Arm], seed: int,
                  compared: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The case's baseline(s) of one seed as one report, graded and diagnosed; a case with a
    second corpus is read from the `--compare-corpus` report of its baselines (`compared`)."""
    from saedoctor.health.apply import apply_health
    from saedoctor.health.policy import load_policy

    if case.compare and compared is not None:
        entry = compared["saes"][seed]  # the baselines come first, one per seed
        document = {"run": compared["run"], "saes": [entry]}
        return apply_health(json.loads(json.dumps(document)), load_policy())
    docs = [load_document(store, base[la], seed, C.DOCS_TEST, "baseline") for la in case.layers]
    document = {"run": docs[0]["run"], "saes": [d["saes"][0] for d in docs]}
    return apply_health(document, load_policy())


def fired(document: dict[str, Any], case: C.Case) -> dict[str, dict[str, Any]]:
    """Rule id -> its diagnosis, for the entry the case's rules judge and the sweep."""
    entry = document["saes"][case.layers.index(case.layer)]
    found = {d["id"]: d for d in entry.get("diagnoses") or []}
    for d in (document.get("sweep") or {}).get("diagnoses") or []:
        found[d["id"]] = d
    return found


def training_changes(diagnosis: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in diagnosis.get("prescriptions") or [] if p["field"] not in NOT_TRAINING]


def case_summary(case: C.Case, docs: list[dict[str, Any]]) -> dict[str, Any]:
    per_seed = []
    for seed, document in enumerate(docs):
        found = fired(document, case)
        entry = document["saes"][case.layers.index(case.layer)]
        per_seed.append({
            "seed": seed, "fired": sorted(found), "grade": entry["grading"]["grade"],
            "prescriptions": {rule: d.get("prescriptions") or [] for rule, d in found.items()},
            "severity": {rule: d.get("severity") for rule, d in found.items()},
            "dense_latent_classes": [x.get("class") for x in entry.get("dense_latents") or []],
            # what today's rules are re-run on (tests/test_prescription_evidence.py)
            "entry": {k: v for k, v in entry.items() if k not in BULKY_ENTRY_KEYS},
            "run": {k: v for k, v in document["run"].items() if k in RUN_KEYS_RULES_READ},
        })  # fmt: skip
    return {"about": case.about, "layers": list(case.layers), "dataset": case.dataset,
            "baseline_config": case.config, "rules": list(case.rules),
            "seeds": per_seed}  # fmt: skip


# -- the arms each rule gets ----------------------------------------------------------------
def with_change(case: C.Case, base: Arm, changes: dict[str, Any]) -> Arm:
    fields = {**base.describe(), **changes}
    layer = int(fields.pop("layer"))
    dataset = str(fields.pop("dataset"))
    return make_arm(layer, dataset, fields)


def rule_arms(case: C.Case, base: Arm, diagnosis: dict[str, Any]) -> dict[str, tuple[Arm, bool]]:
    """Change name -> (arm, prescribed): each prescription alone, then all of them."""
    changes = training_changes(diagnosis)
    arms = {p["field"]: (with_change(case, base, {p["field"]: p["new"]}), True) for p in changes}
    if len(changes) > 1:
        together = {p["field"]: p["new"] for p in changes}
        arms["all"] = (with_change(case, base, together), True)
    return arms


def plan_arm(document: dict[str, Any], case: C.Case) -> tuple[Arm, dict[str, Any]] | None:
    """What `saedoctor train --from-prescription` trains for the judged entry."""
    from saedoctor.train.prescription import plan_from_document

    entry = document["saes"][case.layers.index(case.layer)]
    if not entry.get("prescriptions"):
        return None
    sub = {"run": document["run"], "saes": [entry]}
    (plan,) = plan_from_document(sub, source=f"{case.name} baseline")
    cfg = plan.config
    fields = {
        **cfg.sae_fields(),
        "training_tokens": cfg.training_tokens,
        "batch_size": cfg.batch_size,
        "gradient_accumulation": cfg.gradient_accumulation,
    }
    arm = make_arm(cfg.layers[0], cfg.dataset, fields)
    about = {"changes": [c.__dict__ for c in plan.changes], "skipped": plan.skipped}
    return arm, about


# -- verdicts --------------------------------------------------------------------------------
def values(store: Store, arm: Arm, seeds: list[int], metric: str, corpus: str
           ) -> list[float | None]:  # fmt: skip
    return [load_entry(store, arm, s, corpus)["metrics"].get(metric) for s in seeds]


def graded_means(store: Store, arm: Arm, seeds: list[int], corpus: str) -> dict[str, Any]:
    """Each graded metric's mean over seeds, each seed's status under the default policy, and
    the median seed's status (a mean of counts may fall between bands: 0.33 always-on)."""
    from saedoctor.health.grading import status_of
    from saedoctor.health.policy import GRADED_METRICS, load_policy

    policy = load_policy()
    out: dict[str, Any] = {}
    for metric in GRADED_METRICS:
        mp = policy.metrics[metric]
        source = metric
        vals = values(store, arm, seeds, source, corpus)
        if any(v is None for v in vals) and mp.fallback_source:
            source = mp.fallback_source
            vals = values(store, arm, seeds, source, corpus)
        if any(v is None for v in vals):
            continue
        per_seed = [status_of(v, mp, policy) for v in vals]
        out[metric] = {"source": source, "mean": sum(vals) / len(vals), "seeds": per_seed,
                       "status": V.median_status(per_seed)}  # fmt: skip
    return out


def judge(store: Store, base: Arm, arm: Arm, metric: str, better: str, seeds: list[int],
          corpus: str) -> dict[str, Any]:  # fmt: skip
    b, a = values(store, base, seeds, metric, corpus), values(store, arm, seeds, metric, corpus)
    if any(v is None for v in a + b):
        return {"verdict": "not measured", "metric": metric, "seeds": len(seeds)}
    diff = V.paired(b, a)
    gb, ga = graded_means(store, base, seeds, corpus), graded_means(store, arm, seeds, corpus)
    worse = V.band_drops({k: v["status"] for k, v in gb.items()},
                         {k: v["status"] for k, v in ga.items()})  # fmt: skip
    base_stats, arm_stats = V.mean_interval(b), V.mean_interval(a)
    return {
        "verdict": V.verdict(diff["interval"], better, worse), "metric": metric,
        "better": better, "delta": diff["mean"], "interval": diff["interval"],
        "differences": diff["differences"], "seeds": len(seeds), "worse": worse,
        "baseline": {**base_stats, "values": b}, "arm": {**arm_stats, "values": a},
        "statuses": {"baseline": {k: v["status"] for k, v in gb.items()},
                     "arm": {k: v["status"] for k, v in ga.items()}},
        "seed_statuses": {"baseline": {k: v["seeds"] for k, v in gb.items()},
                          "arm": {k: v["seeds"] for k, v in ga.items()}},
        "graded_means": {"baseline": {k: v["mean"] for k, v in gb.items()},
                         "arm": {k: v["mean"] for k, v in ga.items()}},
        "effect": V.effect(diff["mean"], better, abs(base_stats["mean"])),
        "baseline_arm": base.id, "arm_id": arm.id, "corpus": corpus,
    }  # fmt: skip


def ranked(block: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rule's changes, best measured effect first (helped, no effect, hurt)."""
    order = {V.HELPED: 0, V.NO_EFFECT: 1, V.HURT: 2}
    keys = sorted(block, key=lambda k: (order.get(block[k]["verdict"], 3),
                                        -block[k].get("effect", 0.0)))  # fmt: skip
    out = {}
    for rank, key in enumerate(keys, 1):
        out[key] = {**block[key], "rank": rank}
    return out


# -- the guide -----------------------------------------------------------------------------------
def refused(changes: list[str]) -> dict[str, Any]:
    """What `saedoctor train` says to the guide's values it cannot run."""
    cmd = [sys.executable, "-m", "saedoctor", "train", *changes, "--tokens", "10240",
           "--out", str(Path("sae_runs") / "refused")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    text = " ".join((done.stderr or done.stdout).split())
    return {"command": "saedoctor train " + " ".join(changes), "exit_code": done.returncode,
            "error": text[-600:]}  # fmt: skip


def guide_reference(b: Budget) -> Arm:
    return make_arm(C.GUIDE_LAYER, C.GUIDE_DATASET, {**C.GENERAL, "training_tokens": b.train})


def guide_list(quick: bool) -> list[C.GuideArm]:
    """The guide arms run; --quick keeps two without gradient accumulation."""
    return [g for g in C.GUIDE_ARMS if not g.run_fields][:2] if quick else list(C.GUIDE_ARMS)


def guide_arms(b: Budget, guides: list[C.GuideArm]) -> dict[str, Arm]:
    out = {}
    for g in guides:
        fields = {**C.GENERAL, "training_tokens": b.train, **g.changes, **g.run_fields}
        out[g.name] = make_arm(C.GUIDE_LAYER, C.GUIDE_DATASET, fields)
    return out


def domain_arms(b: Budget, quick: bool) -> dict[str, Arm]:
    t = {"training_tokens": b.train}
    if quick:
        return {
            "domain preset": make_arm(C.GUIDE_LAYER, C.CODE_TRAIN, {**C.DOMAIN_PRESET, **t}),
            "general preset": make_arm(C.GUIDE_LAYER, C.CODE_TRAIN, {**C.GENERAL, **t}),
        }
    return {
        "domain preset": make_arm(C.GUIDE_LAYER, C.CODE_TRAIN, {**C.DOMAIN_PRESET, **t}),
        "general preset": make_arm(C.GUIDE_LAYER, C.CODE_TRAIN, {**C.GENERAL, **t}),
        "guide domain configuration (expansion_factor 1 for 0.2)": make_arm(
            C.GUIDE_LAYER, C.CODE_TRAIN,
            {**C.GENERAL, **t, **C.GUIDE_DOMAIN_RUNNABLE, "batch_size": 8,
             "gradient_accumulation": 4}),
    }  # fmt: skip


# -- the run ---------------------------------------------------------------------------------
def cache_everything(store: Store, b: Budget, extra: dict[tuple[str, int], int]) -> None:
    from saedoctor.activations.model import load_model

    needs: dict[str, dict[int, int]] = {}
    for (corpus, layer), tokens in extra.items():
        needs.setdefault(corpus, {})[layer] = max(tokens, needs.get(corpus, {}).get(layer, 0))
    loaded = None
    for corpus, targets in needs.items():
        if all(cached_tokens(cache_file(store.cache, corpus, la)) >= n
               for la, n in targets.items()):  # fmt: skip
            continue
        loaded = loaded or load_model(None)
        with heartbeat(f"cache {corpus} at blocks {sorted(targets)}"):
            cache_corpus(loaded, store.cache, corpus, targets)


def cache_needs(arms: list[Arm], b: Budget) -> dict[tuple[str, int], int]:
    needs: dict[tuple[str, int], int] = {}
    for arm in arms:
        key = (arm.dataset, arm.layer)
        needs[key] = max(needs.get(key, 0), dict(arm.run)["training_tokens"])
        test = arm.dataset.replace("@train", "@test")
        needs[(test, arm.layer)] = b.eval
        needs[(C.DOCS_TEST, arm.layer)] = b.eval
    return needs


@dataclass
class Run:
    """One benchmark run: its settings, and what is done so far."""

    args: argparse.Namespace
    b: Budget
    store: Store
    seeds: list[int]
    cases: list[C.Case]
    guides: list[C.GuideArm]
    started: float
    start: float
    bases: dict[str, dict[int, Arm]]
    done: list[str]


def main() -> None:
    args = parse()
    out = _results.out_dir(args)
    if args.quick:
        args.work = out / f"{NAME}-work"
    if args.threads:
        torch.set_num_threads(args.threads)
    b = budget_of(args)
    cases = [c for c in C.CASES if c.quick or not args.quick]
    bases = {case.name: baseline_arms(case, b) for case in cases}
    run = Run(args, b, Store(args.work, args.work / "cache"), list(range(b.seeds)), cases,
              guide_list(args.quick), time.time(), time.perf_counter(), bases, [])  # fmt: skip
    say(f"budget {b}; work {args.work}")
    cards = 8 if args.quick else 64
    docs = Eval(C.DOCS_TEST, b.eval, b.downstream, cards)
    base_list = [a for arms in bases.values() for a in arms.values()] + [story_arm(bases)]
    # block 22's token-doubling arms: cached with the baselines in one pass
    doubled = {(C.DOCS_TRAIN, 22): 2 * b.train}
    cache_everything(run.store, b, {**cache_needs(base_list, b), **doubled})
    train_arms(run.store, base_list, run.seeds)
    measure(run.store, [(a, s) for a in base_list[:-1] for s in run.seeds], docs, full=True)
    compared = compare_document(run.store, bases, b, run.seeds)
    diagnosed = {c.name: [diagnose_case(run.store, c, bases[c.name], s, compared)
                          for s in run.seeds] for c in cases}  # fmt: skip
    plans, rules, extras = build_arms(cases, bases, diagnosed)
    for case in cases:  # most informative first; a result file after each
        wanted = case_arms(case.name, plans, rules, extras) + [bases[case.name][case.layer]]
        if case.name == "code_trained":
            wanted.append(story_arm(bases))
        train_and_measure(run, wanted, docs)
        run.done.append(case.name)
        write(run, out, diagnosed, plans, rules, extras)
    run.done.append("mismatch_story")
    write(run, out, diagnosed, plans, rules, extras)
    reference, g_arms = guide_reference(b), guide_arms(b, run.guides)
    d_arms = domain_arms(b, args.quick)
    train_and_measure(run, [reference, *g_arms.values()], docs)
    train_and_measure(run, list(d_arms.values()), Eval(C.CODE_TEST, b.eval, b.downstream))
    run.done.append("guide")
    print(write(run, out, diagnosed, plans, rules, extras))


def record_run(run: Run) -> dict[str, float]:
    """Seconds each process spent on this work dir (an interrupted run resumes in another):
    `<work>/runs.json`, this process's entry updated at every write."""
    path = run.store.work / "runs.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    key = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(run.started))
    runs[key] = round(time.perf_counter() - run.start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1))
    return runs


def case_arms(name: str, plans: dict, rules: dict, extras: dict) -> list[Arm]:
    arms = [a for (case, _), block in rules.items() if case == name for a, _, _ in block.values()]
    arms += [a for case, (a, _) in plans.items() if case == name]
    return arms + [a for (case, _), (a, _) in extras.items() if case == name]


def train_and_measure(run: Run, arms: list[Arm], ev: Eval) -> None:
    arms = list(dict.fromkeys(arms))
    cache_everything(run.store, run.b, cache_needs(arms, run.b))
    train_arms(run.store, arms, run.seeds)
    measure(run.store, [(a, s) for a in arms for s in run.seeds], ev)


def write(run: Run, out: Path, diagnosed: dict, plans: dict, rules: dict, extras: dict) -> str:
    """The result so far: verdicts of the cases done, the story and the guide once done."""
    store, seeds, cases, bases = run.store, run.seeds, run.cases, run.bases
    done_rules = {k: v for k, v in rules.items() if k[0] in run.done}
    verdicts = rule_verdicts(store, cases, bases, done_rules, plans, extras, seeds)
    on_docs = [a for arms in bases.values() for a in arms.values()]
    on_docs += [a for name in run.done for a in case_arms(name, plans, rules, extras)]
    on_code: list[Arm] = []
    guide = story = None
    if "mismatch_story" in run.done:
        story = mismatch_story(store, bases, run.b, seeds)
        on_docs.append(story_arm(bases))
    if "guide" in run.done:
        reference, g_arms = guide_reference(run.b), guide_arms(run.b, run.guides)
        d_arms = domain_arms(run.b, run.args.quick)
        guide = guide_section(store, seeds, run.guides, reference, g_arms, d_arms, verdicts,
                              bases, extras)  # fmt: skip
        on_docs += [reference, *g_arms.values()]
        on_code = list(d_arms.values())
    runs = record_run(run)
    missing = [c.name for c in cases if c.name not in run.done]
    missing += [x for x in ("mismatch_story", "guide") if x not in run.done]
    b = run.b
    payload = {
        "complete": not missing, "missing": missing,
        "budget": b.__dict__, "seeds": seeds, "model": "SmolLM2-135M-Instruct (embedded)",
        "eval": {"corpus": C.DOCS_TEST, "tokens": b.eval, "downstream_tokens": b.downstream},
        "method": METHOD, "targets": {r: {"metric": m, "better": d}
                                      for r, (m, d) in C.TARGETS.items()},
        "cases": {c.name: case_summary(c, diagnosed[c.name]) for c in cases},
        "not_fired": not_fired(cases, diagnosed),
        "untested_rules": untested(cases, diagnosed),
        "verdicts": verdicts, "guide": guide, "mismatch_story": story,
        "arms": arms_table(store, on_docs, on_code, seeds),
        "wall_s": round(time.perf_counter() - run.start, 1), "threads": torch.get_num_threads(),
        "wall_s_all_runs": round(sum(runs.values()), 1), "runs_s": runs,
    }  # fmt: skip
    from _rx_report import markdown

    table = markdown(payload)
    _results.write_result(NAME, payload, out, run.started, quick=run.args.quick, markdown=table)
    return table


METHOD = (
    "Each baseline and arm is a TopK/ReLU SAE trained by saedoctor's trainer on cached "
    "activations of the embedded default (blocks' resid_post), one pass per (seed, block, "
    "corpus, run settings) so arms of one seed share initial weights (same width) and the "
    "same shuffled tokens. Each is measured on held-out python-docs@test: the main pass on "
    "cached activations, loss recovered with the model on the first downstream tokens, "
    "then graded and diagnosed by saedoctor's rules. Verdicts: paired difference (arm - "
    "baseline, same seed), 95 % t interval over seeds; helped = interval on the improving "
    "side and no graded metric's status (median seed) worse than the baseline's; hurt = "
    "interval on the worsening side or a status drop; no effect = interval holds 0."
)


def build_arms(cases: list[C.Case], bases: dict[str, dict[int, Arm]],
               diagnosed: dict[str, list[dict]]) -> tuple[dict, dict, dict]:  # fmt: skip
    """From seed 0's diagnoses: the plan arm per case, each targeted rule's arms, extras."""
    plans: dict[str, tuple[Arm, dict]] = {}
    rules: dict[tuple[str, str], dict[str, tuple[Arm, bool, str]]] = {}
    extras: dict[tuple[str, str], tuple[Arm, tuple[str, ...]]] = {}
    for case in cases:
        document = diagnosed[case.name][0]
        base = bases[case.name][case.layer]
        if case.plan and (plan := plan_arm(document, case)) is not None:
            plans[case.name] = plan
        for rule in case.rules:  # prescriptions of the first seed on which the rule fired
            seed = next((s for s, d in enumerate(diagnosed[case.name]) if rule in fired(d, case)),
                        None)  # fmt: skip
            if seed is not None:
                found = fired(diagnosed[case.name][seed], case)
                arms = rule_arms(case, base, found[rule])
                rules[(case.name, rule)] = {k: (a, p, seed) for k, (a, p) in arms.items()}
        for label, changes in case.extras.items():
            extras[(case.name, label)] = (with_change(case, base, changes), (case.rules[0],))
        for rule, changes in case.retired:  # one arm may be retired from several rules
            label = f"{', '.join(changes)} (retired)"
            arm = with_change(case, base, doubled(base, changes))
            before = extras.get((case.name, label), (arm, ()))[1]
            extras[(case.name, label)] = (arm, (*before, rule))
    return plans, rules, extras


def doubled(base: Arm, changes: dict[str, Any]) -> dict[str, Any]:
    """A retired change as trained: `x2` doubles the baseline's value."""
    fields = base.describe()
    return {k: 2 * fields[k] if v == C.DOUBLE else v for k, v in changes.items()}


def rule_verdicts(store: Store, cases: list[C.Case], bases: dict, rules: dict, plans: dict,
                  extras: dict, seeds: list[int]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Rule -> change -> verdict. A rule judged on a second baseline keys its changes
    `field (case)`."""
    blocks: dict[str, dict[str, Any]] = {}
    for (case_name, rule), arms in rules.items():
        case = next(c for c in cases if c.name == case_name)
        block = _case_block(store, case, bases, rule, arms, plans, extras, seeds)
        first = rule not in blocks
        for key, value in block.items():
            blocks.setdefault(rule, {})[key if first else f"{key} ({case_name})"] = value
    return {rule: ranked(block) for rule, block in blocks.items()}


def _case_block(store: Store, case: C.Case, bases: dict, rule: str, arms: dict, plans: dict,
                extras: dict, seeds: list[int]) -> dict[str, Any]:  # fmt: skip
    metric, better = C.TARGETS[rule]
    case_name = case.name
    base = bases[case_name][case.layer]
    block = {}
    for key, (arm, prescribed, seed) in arms.items():
        block[key] = {**judge(store, base, arm, metric, better, seeds, C.DOCS_TEST),
                      "prescribed": prescribed, "change": changed(base, arm),
                      "case": case_name, "prescribed_on_seed": seed}  # fmt: skip
    if case_name in plans:
        arm, about = plans[case_name]
        block["plan"] = {**judge(store, base, arm, metric, better, seeds, C.DOCS_TEST),
                         "prescribed": True, "change": changed(base, arm),
                         "case": case_name, "plan": about}  # fmt: skip
    for (extra_case, label), (arm, judged_on) in extras.items():
        if extra_case == case_name and rule in judged_on:
            block[label] = {**judge(store, base, arm, metric, better, seeds, C.DOCS_TEST),
                            "prescribed": False, "retired": label.endswith("(retired)"),
                            "change": changed(base, arm), "case": case_name}  # fmt: skip
    return block


def untested(cases: list[C.Case], diagnosed: dict[str, list[dict]]) -> dict[str, Any]:
    """Rules no case is built to fire, with each baseline's value of their metric (seed by
    seed) and whether they fired anywhere."""
    declared = {r for c in cases for r in c.rules}
    out = {}
    for rule in (r for r in C.RULES if r not in declared):
        metric = C.TARGETS[rule][0]
        values = {c.name: [d["saes"][c.layers.index(c.layer)]["metrics"].get(metric)
                           for d in diagnosed[c.name]] for c in cases}  # fmt: skip
        anywhere = sorted(c.name for c in cases
                          if any(rule in fired(d, c) for d in diagnosed[c.name]))  # fmt: skip
        out[rule] = {"metric": metric, "baselines": values, "fired_on": anywhere}
    if "high_absorption" in out:
        out["high_absorption"]["at_initialisation"] = initial_absorption()
    return out


def initial_absorption() -> dict[str, Any]:
    """The absorption of the general preset's decoder before any step (random unit rows), per
    seed: how far the trained baselines' decoders have moved from it."""
    from saedoctor.metrics.absorption import decoder_absorption
    from saedoctor.sae.site import Site
    from saedoctor.train.config import TrainConfig
    from saedoctor.train.sae_trainer import TrainableSAE

    values = []
    for seed in range(3):
        cfg = TrainConfig(layers=[10], seed=seed, **C.GENERAL)
        sae = TrainableSAE("init", Site(10), cfg, d_in=576, total_steps=1)
        w_dec = sae.params["W_dec"].detach()
        alive = torch.ones(w_dec.shape[0], dtype=torch.bool)
        values.append(decoder_absorption(w_dec, alive)["absorption"])
    return {"about": "general preset, block 10, before the first step", "seeds": values}


def not_fired(cases: list[C.Case], diagnosed: dict[str, list[dict]]) -> list[dict[str, Any]]:
    missing = []
    for case in cases:
        for seed, document in enumerate(diagnosed[case.name]):
            found = fired(document, case)
            for rule in case.rules:
                if rule not in found:
                    missing.append({"case": case.name, "rule": rule, "seed": seed,
                                    "fired_instead": sorted(found)})  # fmt: skip
    return missing


def arms_table(store: Store, on_docs: list[Arm], on_code: Any, seeds: list[int]
               ) -> dict[str, Any]:  # fmt: skip
    table: dict[str, Any] = {}
    for corpus, arms in ((C.DOCS_TEST, on_docs), (C.CODE_TEST, list(on_code))):
        for arm in dict.fromkeys(arms):
            if not all(store.metrics_file(arm, s, corpus).is_file() for s in seeds):
                continue  # a baseline measured only for its diagnosis so far
            row = table.setdefault(arm.id, {"config": arm.describe(), "eval": {}})
            row["eval"][corpus] = {str(s): _seed_row(load_entry(store, arm, s, corpus))
                                   for s in seeds}  # fmt: skip
    return table


def _seed_row(entry: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in (entry.get("metrics") or {}).items()
               if isinstance(v, int | float | str | None)}  # fmt: skip
    grading = entry.get("grading") or {}
    return {"metrics": metrics, "grade": grading.get("grade"),
            "held_back_by": grading.get("held_back_by"),
            "diagnoses": [d["id"] for d in entry.get("diagnoses") or []]}  # fmt: skip


# -- the guide and its mismatch story ------------------------------------------------------------
def guide_section(store: Store, seeds: list[int], guides: list[C.GuideArm], reference: Arm,
                  g_arms: dict[str, Arm], d_arms: dict[str, Arm], verdicts: dict,
                  bases: dict, extras: dict) -> dict[str, Any]:  # fmt: skip
    recs = {}
    for g in guides:
        arm = g_arms[g.name]
        recs[g.name] = {**judge(store, reference, arm, g.metric, g.better, seeds, C.DOCS_TEST),
                        "claim": g.claim, "as_written": g.as_written, "ran": g.changes,
                        "run_fields": g.run_fields}  # fmt: skip
    domain = {}
    ref = d_arms["domain preset"]
    for name, arm in d_arms.items():
        if arm != ref:
            domain[f"{name} vs domain preset"] = judge(
                store, ref, arm, "loss_recovered", "higher", seeds, C.CODE_TEST
            )
    per_layer = {}
    sweep = bases.get("preset_every_depth")
    for (case_name, label), (arm, _) in extras.items():
        if case_name == "preset_every_depth" and sweep:
            per_layer[label] = judge(store, sweep[max(sweep)], arm, "loss_recovered", "higher",
                                     seeds, C.DOCS_TEST)  # fmt: skip
    return {
        "reference": {"arm_id": reference.id, "config": reference.describe(),
                      "about": "saedoctor's general preset at block 10 on python-docs@train"},
        "expansion_below_one": {
            "why": "expansion_factor is d_sae / d_model: 576 x 0.25 = 144 and 576 x 0.2 = "
                   "115 latents, fewer than the 576 dimensions of the residual stream, so "
                   "the dictionary cannot be overcomplete (every latent must cover several "
                   "directions at once)",
            "d_model": 576, "latents": {"0.25": 144, "0.2": 115, "0.15": 86},
            "refused": refused(["--expansion-factor", "0.25"]),
            "refused_threshold": refused(["--dead-feature-threshold", "0.1"]),
        },
        "recommendations": ranked(recs),
        "general_as_written": C.GUIDE_GENERAL_AS_WRITTEN,
        "domain_as_written": C.GUIDE_DOMAIN_AS_WRITTEN,
        "domain": domain,
        "domain_data": verdicts.get("data_mismatch", {}).get("dataset"),
        "per_layer": per_layer,
        "late_block": max(sweep) if sweep else None,
        "presets": {"general": reference.id, "domain": ref.id},
    }  # fmt: skip


def story_arm(bases: dict) -> Arm:
    """The code-trained baseline retrained on python-docs (what data_mismatch prescribes)."""
    case = next(c for c in C.CASES if c.name == "code_trained")
    return with_change(case, bases[case.name][case.layer], {"dataset": C.DOCS_TRAIN})


def mismatch_story(store: Store, bases: dict, b: Budget, seeds: list[int]) -> dict[str, Any]:
    """The code-trained SAE diagnosed on python-docs@test against python-code@test, and the
    SAE retrained on python-docs the same way."""
    doc = compare_document(store, bases, b, seeds)
    rows = {}
    for i, label in enumerate(("trained on python-code", "trained on python-docs")):
        entries = doc["saes"][i * len(seeds) : (i + 1) * len(seeds)]
        rows[label] = [_story_row(e) for e in entries]
    return {"tokens": b.compare, "corpus": C.DOCS_TEST, "compare_corpus": C.CODE_TEST,
            "training_tokens": dict(story_arm(bases).run)["training_tokens"],
            "rows": rows}  # fmt: skip


def compare_document(store: Store, bases: dict, b: Budget, seeds: list[int]) -> dict[str, Any]:
    """`diagnose --corpus python-docs@test --compare-corpus python-code@test` of the
    code-trained baselines, then of the same SAEs retrained on python-docs (seed order)."""
    case = next(c for c in C.CASES if c.name == "code_trained")
    code_arm, docs_arm = bases[case.name][case.layer], story_arm(bases)
    path = store.work / f"mismatch-compare-{code_arm.id}-{docs_arm.id}.json"
    if not path.is_file():
        from saedoctor.diagnose import DiagnoseOptions, diagnose

        saes = [str(store.sae_dir(a, s)) for a in (code_arm, docs_arm) for s in seeds]
        with heartbeat(f"diagnose {len(saes)} SAEs on {C.DOCS_TEST} vs {C.CODE_TEST}"):
            doc = diagnose(DiagnoseOptions(saes=saes, corpus=C.DOCS_TEST,
                                           compare_corpus=C.CODE_TEST, tokens=b.compare,
                                           downstream_tokens=b.downstream, preflight="none",
                                           cards=0, quiet=True,
                                           explain_tokens=b.compare))  # fmt: skip
        path.write_text(json.dumps(doc, default=str))
    return json.loads(path.read_text())


def _story_row(entry: dict[str, Any]) -> dict[str, Any]:
    comparison = entry.get("corpus_comparison") or {}
    found = next((d for d in entry.get("diagnoses") or [] if d["id"] == "data_mismatch"), None)
    keys = ("variance_explained", "loss_recovered")
    return {
        "main": {k: entry["metrics"].get(k) for k in keys},
        "compare": {k: (comparison.get("metrics") or {}).get(k) for k in keys},
        "density_jsd": comparison.get("density_jsd"),
        "density_jsd_interval": comparison.get("density_jsd_interval"),
        "fired": found is not None, "severity": (found or {}).get("severity"),
        "prescriptions": (found or {}).get("prescriptions", []),
    }  # fmt: skip


if __name__ == "__main__":
    main()
