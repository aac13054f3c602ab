"""Small builders shared by tests, and the gate for tests that need optional tools."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
import torch

from saedoctor.sae.model import SAE, SAEConfig
from saedoctor.sae.site import Site


def random_sae(
    d_in: int,
    d_sae: int,
    architecture: str = "topk",
    k: int | None = 8,
    site: Site | None = None,
    seed: int = 0,
) -> SAE:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(
        SAEConfig(architecture, d_in, d_sae, k=k if architecture == "topk" else None, site=site)
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
    return sae


def saved_sae(directory: Path, sae: SAE) -> Path:
    from saedoctor.sae.loaders import save_sae

    save_sae(sae, directory)
    return directory


# Where each optional requirement comes from: `make setup` (the Makefile's venv recipe).
PIP_EXTRAS = {"sae_lens": "peers", "transformer_lens": "peers"}  # any other module: `dev`
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def in_ci() -> bool:
    """CI runs (the `CI` environment variable set to anything non-empty) must run every test."""
    return bool(os.environ.get("CI"))


def skip_or_fail_in_ci(message: str) -> NoReturn:
    """Skip with `message`; under CI fail with it, so a missing tool cannot pass unnoticed."""
    if in_ci():
        pytest.fail(f"{message} [CI is set: failing instead of skipping]", pytrace=False)
    pytest.skip(message)


def require_module(name: str) -> ModuleType:
    """Import `name`, or skip (fail under CI) saying which extra `make setup` installs it from.
    A module that is installed but fails to import (a missing dependency of its own) is an
    error, never a skip."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(f"{exc.name}.")):
            raise
        extra = PIP_EXTRAS.get(name.partition(".")[0], "dev")
        skip_or_fail_in_ci(
            f"Python module {name} is not installed; `make setup` installs it "
            f"(pip install -e '.[dev,peers]', the `{extra}` extra)"
        )


def require_chromium() -> Path:
    """The chromium executable on PATH, or skip (fail under CI) saying how to install it."""
    found = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if found is None:
        skip_or_fail_in_ci(
            f"no {' or '.join(CHROMIUM_NAMES)} on PATH; `make setup` runs "
            "scripts/ensure-chromium.sh, which installs Debian's chromium with apt-get "
            "(as root, or through passwordless sudo)"
        )
    return Path(found)


def ctrl_c_at(step: int):
    """An on_step hook that sends this process a real SIGINT (what Ctrl-C does) at `step`."""

    def hook(trainer) -> None:
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def interrupted_and_uninterrupted(cfg, acts, work: Path, step: int = 17):
    """(a run to the end, the same run stopped by Ctrl-C at `step` and resumed), on the same
    in-memory activations: what every trainer's resume test compares."""
    from saedoctor.train.trainer import TrainingInterrupted, train_on_activations

    reference = train_on_activations(cfg, acts, work / "ref")
    with pytest.raises(TrainingInterrupted):
        train_on_activations(cfg, acts, work / "run", on_step=ctrl_c_at(step))
    resumed = train_on_activations(cfg, acts, work / "run", resume=True)
    assert [r["variance_explained"] for r in resumed.history] == [
        r["variance_explained"] for r in reference.history
    ]
    return reference, resumed


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


class OfflinePages:
    """Pages of one headless Chromium that may read local files only: every other request is
    blocked and remembered, and console errors are collected."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.network: list[str] = []

    def new_page(self):
        page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.route("**/*", self._route)
        return page

    def _route(self, request_route) -> None:  # anything but a file is a leak
        if request_route.request.url.startswith("file://"):
            request_route.continue_()
        else:
            self.network.append(request_route.request.url)
            request_route.abort()

    def assert_clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.network, f"the page tried to fetch: {self.network}"


@contextlib.contextmanager
def offline_chromium():
    """OfflinePages on the machine's Chromium (under CI, its absence fails the test); checks
    on leaving that no page logged an error or fetched anything."""
    chromium = require_chromium()
    sync_api = require_module("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        pages = OfflinePages(browser)
        try:
            yield pages
        finally:
            browser.close()
    pages.assert_clean()
