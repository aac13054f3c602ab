"""What a diagnosis run is asked to do: `DiagnoseOptions`, the one declaration of
`saedoctor diagnose`'s options (each field's flag and help: `saedoctor.options`)."""

from __future__ import annotations

from dataclasses import dataclass

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.options import flag_of, option
from saedoctor.sae.site import SITE_KINDS

DTYPES = ("float32", "bfloat16", "float16", "float64")
MIN_ABSORPTION_SAMPLE = 2  # a confidence interval needs two sampled features
_POSITIVE_INTS = ("tokens", "context", "batch_size", "explain_tokens", "preflight_tokens",
                  "auto_max_tokens")  # fmt: skip
# The pre-flight checks (saedoctor.diagnose.preflight), in the order they run.
PREFLIGHT_CHECKS = ("site", "norm", "special", "outliers")


@dataclass
class DiagnoseOptions:
    """Everything `saedoctor diagnose` takes; defaults are the embedded default run."""

    # -- what is diagnosed --------------------------------------------------------------
    model: str | None = option(
        None, help="HF model id or local dir; default: SmolLM2-135M-Instruct")
    saes: list[str] = option(
        [], flag="--sae", help="SAE path (repeatable: several layers at once). Default: the "
        "embedded default SAE")
    layer: int | None = option(None, help="block index, when the SAE config has none")
    site: str | None = option(None, help="resid_post | resid_pre | mlp_out | attn_out")
    # -- the data ---------------------------------------------------------------------------
    corpus: str = option(
        defaults.DEFAULT_EVAL_CORPUS, help="python-docs or python-code (suffix @train / @test: "
        "the 90/10 split), a .txt/.jsonl/.parquet file or dir, or an HF dataset id")
    compare_corpus: str | None = option(
        None, help="evaluate the same SAEs on a second corpus: training-data mismatch")
    text_field: str = option("text", help="text column of jsonl/parquet/HF data")
    tokens: int | str = option(
        defaults.DEFAULT_EVAL_TOKENS, cli_type=str, help="tokens to stream, or auto: until "
        "more tokens could not change any graded status (each metric's interval in one band, "
        "or narrower than --auto-width of its value), at most --auto-max-tokens")
    auto_width: float = option(
        0.02, help="--tokens auto: an interval narrower than this fraction of its value is "
        "settled")
    auto_max_tokens: int = option(1_000_000, help="--tokens auto: stream at most this many")
    auto_tokens: bool = option(
        False, cli=False, help="set by --tokens auto (tokens is then the cap)")
    context: int = option(defaults.DEFAULT_CONTEXT, help="sequence length")
    batch_size: int = option(defaults.DEFAULT_BATCH_SIZE, help="sequences per batch")
    device: str = option("cpu", help="cpu, cuda, cuda:1, mps")
    dtype: str = option("float32", help=f"model dtype: {' | '.join(DTYPES)}")
    activations: str | None = option(
        None, help="cached activations (.safetensors, .npy or a `saedoctor cache-activations` "
        "directory) instead of a model")
    include_special: bool = option(False, help="count BOS/EOS/pad positions too")
    # -- pre-flight: is the SAE wired to the right activations? (before the main pass) -----
    preflight: str = option(
        "all", help="checks on the first --preflight-tokens tokens before the main pass: all | "
        f"none | a comma list of {','.join(PREFLIGHT_CHECKS)} (right block and site; input "
        "norm; BOS/special tokens; activation-outlier severity)")
    preflight_tokens: int = option(512, help="tokens the pre-flight checks read")
    # -- what is measured -------------------------------------------------------------------
    always_on_threshold: float = option(0.80, help="density above which a feature is always-on")
    explain_tokens: int = option(
        16_384, help="tokens examined for always-on features' strongest/weakest tokens")
    downstream: bool = option(
        True, help="measure loss recovered / KL by splicing each SAE into the model")
    downstream_tokens: int | None = option(
        defaults.DEFAULT_DOWNSTREAM_TOKENS,
        help="the first N tokens of the main pass also measure loss recovered / KL, which "
        "costs most of a run on a CPU; the rest measure every other metric. At least --tokens: "
        "all of them (None in Python: all)", cli_type=int)
    cards: int = option(
        64, help="feature cards per SAE (top and random contexts, histogram, logit lens, "
        "nearest decoder rows) for this many sampled alive features, besides every always-on, "
        "dense and uncertain one; collected in the main pass. 0: no cards at all")
    card_features: list[int] = option(
        [], flag="--card-feature", help="also give a card to this feature (repeatable)")
    first_letter_absorption: bool = option(
        False, help="also measure SAEBench's probe-based first-letter absorption (slow)")
    first_letter_words: int = option(4000, help="words sampled for first-letter absorption")
    absorption_sample: int | None = option(
        None, help="estimate absorption from N sampled features, with a 95% CI (each one's "
        "max still exact); default: exact over all features")
    policy: str | None = option(None, help="TOML file overriding the grading thresholds")
    seed: int = option(0, help="random seed (sampling, shuffles)")
    # -- a model larger than one device: each SAE then runs on its site's device ------------
    device_map: str | dict | None = option(
        None, cli_type=str | None, help="spread a model larger than one device with "
        "accelerate: auto | balanced | sequential, or (Python) a device map dict")
    quantize: str | None = option(
        None, help="load the model's weights in 8bit | 4bit (bitsandbytes)")
    quiet: bool = option(False, help="no progress bars")
    # -- interrupt / resume of the main pass (saedoctor.diagnose_state) -------------------
    resume: bool = option(
        False, help="continue an interrupted run from its state file, <out>.partial."
        "safetensors (same options and SAEs required). Ctrl-C or SIGTERM during the main "
        "pass saves that file and exits 130; it is also saved every --checkpoint-minutes "
        "and deleted once the report is written. The always-on explanations, "
        "--compare-corpus and --first-letter-absorption passes rerun from scratch on resume")
    state_file: str | None = option(
        None, cli=False, help="the main pass's state file; None: in the cache dir, named by "
        "a fingerprint of the inputs (the command puts it beside the report)")
    checkpoint_minutes: float = option(
        5.0, help="save the main pass's state this often (0: only on Ctrl-C)")
    keep_state: bool = option(
        False, cli=False, help="leave the state file for a caller that deletes it only once "
        "its report is safely written")

    def __post_init__(self) -> None:
        # The command line passes --tokens as text (it may be `auto`): a number is an int
        # at once, so options from the CLI and from Python compare equal.
        if isinstance(self.tokens, str) and self.tokens.strip().replace("_", "").isdigit():
            self.tokens = int(self.tokens.strip().replace("_", ""))

    def validate(self) -> None:
        self._resolve_tokens()
        for name in _POSITIVE_INTS:
            if getattr(self, name) <= 0:
                raise InputError(f"{_flag(name)}: expected a positive integer")
        if self.downstream_tokens is not None and self.downstream_tokens <= 0:
            raise InputError(f"{_flag('downstream_tokens')}: expected a positive integer")
        if self.absorption_sample is not None and self.absorption_sample < MIN_ABSORPTION_SAMPLE:
            raise InputError(f"{_flag('absorption_sample')}: expected at least "
                             f"{MIN_ABSORPTION_SAMPLE} features")  # fmt: skip
        if self.site is not None and self.site not in SITE_KINDS:
            raise InputError(f"--site {self.site!r}: expected one of {', '.join(SITE_KINDS)}")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.cards < 0 or any(f < 0 for f in self.card_features):
            raise InputError(f"{_flag('cards')} / {_flag('card_features')}: expected a "
                             "non-negative integer")  # fmt: skip
        if not 0 < self.always_on_threshold <= 1:
            raise InputError("--always-on-threshold: expected a fraction in (0, 1]")
        self.preflight_checks()
        self._validate_combinations()

    def _resolve_tokens(self) -> None:
        """`--tokens auto` → the cap, with `auto_tokens` set; a number given as text → int."""
        if not isinstance(self.tokens, str):
            return
        text = self.tokens.strip().lower()
        if text == "auto":
            if self.activations is not None:
                raise InputError("--tokens auto streams from a model: not with --activations")
            if not 0 < self.auto_width < 1:
                raise InputError(f"{_flag('auto_width')}: expected a fraction in (0, 1)")
            self.tokens, self.auto_tokens = self.auto_max_tokens, True
            return
        try:
            self.tokens = int(text.replace("_", ""))
        except ValueError:
            raise InputError(
                f"--tokens {self.tokens!r}: expected a positive integer or auto") from None

    def preflight_checks(self) -> tuple[str, ...]:
        """The pre-flight checks asked for, in PREFLIGHT_CHECKS order; InputError otherwise."""
        return parse_preflight(self.preflight)

    def _validate_combinations(self) -> None:
        if self.first_letter_absorption and self.activations is not None:
            raise InputError("--first-letter-absorption needs a model: not with --activations")
        if self.compare_corpus is not None and self.activations is not None:
            raise InputError("--compare-corpus needs a model: it cannot be used with --activations")
        if self.checkpoint_minutes < 0:
            raise InputError("--checkpoint-minutes: expected a number of minutes >= 0")
        if self.resume and self.activations is not None:
            raise InputError("--resume applies to a run on a model: not with --activations")


def parse_preflight(value: str) -> tuple[str, ...]:
    """`all`, `none` or a comma list of PREFLIGHT_CHECKS → the checks, in their run order."""
    text = value.strip().lower()
    if text == "all":
        return PREFLIGHT_CHECKS
    if text == "none":
        return ()
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(PREFLIGHT_CHECKS))
    if unknown or not names:
        raise InputError(f"{_flag('preflight')} {value!r}: expected all, none or a comma list "
                         f"of {', '.join(PREFLIGHT_CHECKS)}")  # fmt: skip
    return tuple(c for c in PREFLIGHT_CHECKS if c in names)


def _flag(name: str) -> str:
    return flag_of(DiagnoseOptions, name)
