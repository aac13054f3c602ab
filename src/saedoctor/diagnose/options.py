"""What a diagnosis run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.sae.site import SITE_KINDS

DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class DiagnoseOptions:
    """Everything `saedoctor diagnose` takes; defaults are the embedded default run."""

    model: str | None = None
    saes: list[str] = field(default_factory=list)
    layer: int | None = None
    site: str | None = None
    corpus: str = defaults.DEFAULT_EVAL_CORPUS
    compare_corpus: str | None = None
    text_field: str = "text"
    tokens: int = defaults.DEFAULT_EVAL_TOKENS
    context: int = defaults.DEFAULT_CONTEXT
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    device: str = "cpu"
    dtype: str = "float32"
    activations: str | None = None
    include_special: bool = False
    always_on_threshold: float = 0.80
    explain_tokens: int = 16_384
    downstream: bool = True
    first_letter_absorption: bool = False
    first_letter_words: int = 4000
    policy: str | None = None
    seed: int = 0
    # A model larger than one device: accelerate's device_map ("auto" or a dict), and/or
    # bitsandbytes "8bit" / "4bit" weights; each SAE then runs on its site's device.
    device_map: str | dict | None = None
    quantize: str | None = None
    quiet: bool = False
    # Interrupt / resume of the main pass (see saedoctor.diagnose_state). `state_file` None:
    # in the cache dir, named by a fingerprint of the inputs. `keep_state`: leave the file for
    # a caller that deletes it only once its report is safely written.
    resume: bool = False
    state_file: str | None = None
    checkpoint_minutes: float = 5.0
    keep_state: bool = False

    def validate(self) -> None:
        for name in ("tokens", "context", "batch_size", "explain_tokens"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive integer")
        if self.site is not None and self.site not in SITE_KINDS:
            raise InputError(f"--site {self.site!r}: expected one of {', '.join(SITE_KINDS)}")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if not 0 < self.always_on_threshold <= 1:
            raise InputError("--always-on-threshold: expected a fraction in (0, 1]")
        if self.first_letter_absorption and self.activations is not None:
            raise InputError("--first-letter-absorption needs a model: not with --activations")
        if self.compare_corpus is not None and self.activations is not None:
            raise InputError("--compare-corpus needs a model: it cannot be used with --activations")
        if self.checkpoint_minutes < 0:
            raise InputError("--checkpoint-minutes: expected a number of minutes >= 0")
        if self.resume and self.activations is not None:
            raise InputError("--resume applies to a run on a model: not with --activations")
