"""Feature cards and dense latents in every view: the HTML feature browser (ids, links from the
always-on list, diagnoses, dense-latent table and neighbours; every token escaped), the
terminal card of `saedoctor report --feature` through the real CLI, the Markdown lines, and
the schema with and without cards.

`cards_document()` builds the report: two of the guide's Llama-2-7B layer entries (layers 22
and 28, always-on 290, 294 and 134, 294) with feature cards and dense latents added. Every
card, context, token, activation, histogram, logit-lens value, neighbour, class and evidence
number in it is INVENTED for the renderers to have something to draw; none is measured.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saedoctor.cli import app
from saedoctor.errors import InputError
from saedoctor.report.cards import entry_cards, find_cards, visible_token
from saedoctor.report.cards_html import short
from saedoctor.report.document import write_report
from saedoctor.report.html import plotly_js, render_html
from saedoctor.report.markdown import render_markdown
from saedoctor.report.schema import validate_report
from test_report_data import llama_sweep

# INVENTED: tokens that break naive renderers (markup, entities, quotes, whitespace, pipes).
NASTY = ["<b>", " &amp;", ' "quoted"', "\n", " it's", " ", "|x|", "*star*", "_u_", "</td>"]
PLAIN = [" the", " cat", " sat", " on", " mat", "."]
FRUIT = ["apple", "banana", "cherry", "damson", "elder", "fig", "grape"]  # one word per card


def invented_context(seq: int, tokens: list[str], peak: float, focus: int) -> dict[str, Any]:
    """A window whose focus token has the peak activation and its neighbours less."""
    acts = [
        round(peak / (1 + abs(i - focus)), 3) if abs(i - focus) <= 1 else 0.0
        for i in range(len(tokens))
    ]
    return {
        "sequence": seq,
        "position": 40 + focus,
        "activation": peak,
        "tokens": tokens,
        "activations": acts,
        "focus": focus,
    }


def invented_card(
    feature: int,
    why: list[str],
    seed: int,
    cls: str | None = None,
    neighbours: tuple[int, ...] = (),
    lens: bool = True,
) -> dict[str, Any]:
    windows = [NASTY[: 5 + seed % 3] + PLAIN[:3], PLAIN + NASTY[5:], [*PLAIN[:2], *NASTY[7:]]]
    top = [
        invented_context(seq=10 * seed + k, tokens=w, peak=round(5.0 - k, 2), focus=k + 1)
        for k, w in enumerate(windows)
    ]
    window = [*PLAIN[3:], "\n", f" {FRUIT[seed - 1]}"]
    random = [invented_context(seq=500 + seed, tokens=window, peak=0.75, focus=3)]
    return {
        "feature": feature,
        "why": why,
        "density": 0.9 if "always_on" in why else 0.002,
        "density_interval": [0.88, 0.92] if "always_on" in why else None,
        "mean_activation": 1.7 + seed,
        "top_contexts": top,
        "random_contexts": random,
        "histogram": {
            "edges": [-4 + 0.5 * i for i in range(17)],
            "counts": [0] * 6 + [3, 9, 27 + seed, 9, 1] + [0] * 5,
        },
        "logit_lens": {"top": [["<eos>", 2.5], [" &co", 1.25]], "bottom": [["\n", -3.0]]}
        if lens
        else None,
        "neighbours": [{"feature": n, "cosine": 0.5 - 0.1 * j} for j, n in enumerate(neighbours)],
        "class": cls,
    }


def cards_document() -> dict[str, Any]:
    """Two SAE entries with cards (INVENTED, see the module docstring)."""
    document = llama_sweep()
    document["saes"] = document["saes"][3:5]  # layer 22 (290, 294), layer 28 (134, 294)
    first, second = document["saes"]
    first["cards"] = {
        "method": {
            "top": 3,
            "random": 1,
            "window": [4, 2],
            "sample": 2,
            "seed": 0,
            "histogram": "log10 bins of activation > 0",
        },
        "features": [
            invented_card(7, ["sample"], 1, neighbours=(290, 1000)),
            invented_card(41, ["uncertain", "sample"], 2),
            invented_card(290, ["always_on"], 3, "position", neighbours=(7,)),
            invented_card(294, ["always_on"], 4, None),
        ],
    }
    first["dense_latents"] = [
        {"feature": 290, "density": 0.9, "class": "position", "evidence": {"position_corr": 0.97}},
        {"feature": 294, "density": 0.9, "class": None, "evidence": {"position_corr": 0.1}},
    ]
    first["diagnoses"] = [
        {
            "id": "always_on",
            "title": "2 always-on features",
            "severity": "critical",
            "evidence": ["features 290, 294 fire on 90.0% of tokens"],
        }
    ]
    second["cards"] = {
        "method": first["cards"]["method"],
        "features": [
            invented_card(12, ["sample"], 5, lens=False),
            invented_card(134, ["always_on"], 6, "antipodal_pair", neighbours=(294,)),
            invented_card(294, ["always_on"], 7, "first_token"),
        ],
    }
    second["dense_latents"] = [
        {
            "feature": 134,
            "density": 0.9,
            "class": "antipodal_pair",
            "evidence": {"antipodal_partner": 294, "antipodal_cosine": -0.98},
        },
        {
            "feature": 294,
            "density": 0.9,
            "class": "first_token",
            "evidence": {"first_token_share": 0.99},
        },
    ]
    return document


CARD_IDS = {0: [7, 41, 290, 294], 1: [12, 134, 294]}


def visible(token: str) -> str:
    """Naive reference for the visible form of a token (the glyphs the tokens above need)."""
    return token.replace(" ", "␣").replace("\n", "↵")


CARD_DATA = re.compile(r'<script type="application/json" class="card-data">(.*?)</script>', re.S)


def card_data(page: str) -> list[dict[str, Any]]:
    """Each entry's context JSON, as the page's script will parse it."""
    return [json.loads(blob) for blob in CARD_DATA.findall(page)]


def page_without_plotly(document: dict[str, Any]) -> str:
    return render_html(document).replace(plotly_js(), "")


def test_every_card_has_its_anchor_once_and_a_list_entry() -> None:
    page = page_without_plotly(cards_document())
    for index, features in CARD_IDS.items():
        for feature in features:
            assert page.count(f'id="card-{index}-{feature}"') == 1
            assert f'<li data-card="card-{index}-{feature}"' in page
    assert page.count('<details class="card"') == sum(len(f) for f in CARD_IDS.values())
    assert "hashchange" in page  # the script that opens the card a link names


def section(page: str, index: int) -> str:
    start = page.index(f'<section class="sae" id="sae-{index}">')
    return page[start : page.index("</section>", start)]


def test_always_on_list_and_diagnoses_link_to_their_cards() -> None:
    page = page_without_plotly(cards_document())
    for index, always_on in ((0, [290, 294]), (1, [134, 294])):
        sae = section(page, index)
        metric_table = sae[sae.index('<div class="grid"><div>') : sae.index("</div><div>")]
        links = ", ".join(
            f'<a class="card-link" href="#card-{index}-{f}">{f}</a>' for f in always_on
        )
        assert links in metric_table  # the always-on features row: each id its own link
    first = section(page, 0)
    assert (
        'features <a class="card-link" href="#card-0-290">290</a>, '
        '<a class="card-link" href="#card-0-294">294</a> fire on 90.0% of tokens'
    ) in first
    assert "#card-1-" not in first  # ids never link across entries (294 of L22 is not of L28)


def test_dense_latent_table_and_neighbours_link_only_to_existing_cards() -> None:
    page = page_without_plotly(cards_document())
    first, second = section(page, 0), section(page, 1)
    assert "<h3>Dense latents</h3>" in first
    assert (
        '<td><a class="card-link" href="#card-0-290">290</a></td><td>90.00%</td>'
        "<td>position</td><td>position corr. 0.97</td>"
    ) in first
    assert "<td>unclassified</td><td></td>" in first
    assert 'antipodal cos. -0.98 with <a class="card-link" href="#card-1-294">294</a>' in second
    assert "first-token share 0.99" in second
    card7 = first[first.index('id="card-0-7"') : first.index('id="card-0-41"')]
    assert '<a class="card-link" href="#card-0-290">290</a> (cos 0.5)' in card7
    assert "<li>1000 (cos 0.4)</li>" in card7 and "card-0-1000" not in page  # no card: no link


def test_card_shows_density_class_histogram_and_logit_lens() -> None:
    page = page_without_plotly(cards_document())
    card = page[page.index('id="card-0-290"') : page.index('id="card-0-294"')]
    assert "density 90.00% (88.00–92.00%)" in card and "mean activation 4.7" in card
    assert "class position (position corr. 0.97)" in card
    assert card.count("<rect ") == 5  # the non-empty span of bins, 3 9 30 9 1
    assert "<title>1–3.16: 30</title>" in card  # log10 edges 0 .. 0.5
    assert '<td class="t">&lt;eos&gt;</td><td>+2.5</td>' in card
    assert '<td class="t">↵</td><td>-3</td>' in card
    lensless = page[page.index('id="card-1-12"') : page.index('id="card-1-134"')]
    assert "not measured (no unembedding)" in lensless


def test_context_json_round_trips_every_window() -> None:
    document = cards_document()
    page = page_without_plotly(document)
    blocks = CARD_DATA.findall(page)
    assert len(blocks) == len(document["saes"])
    for blob in blocks:
        assert "<" not in blob  # escaped as \u003c: no "</script>" can end the block early
    for entry, data in zip(document["saes"], card_data(page), strict=True):
        table = data["tokens"]
        assert len(set(table)) == len(table)  # each distinct token once
        assert sorted(data["cards"], key=int) == sorted(
            (str(c["feature"]) for c in entry["cards"]["features"]), key=int
        )
        for card in entry["cards"]["features"]:
            shipped = data["cards"][str(card["feature"])]
            for part in ("top", "random"):
                contexts = card[f"{part}_contexts"]
                rows = shipped[part]
                assert len(rows) == len(contexts)
                for row, c in zip(rows, contexts, strict=True):
                    text, seq, pos, focus, tokens, acts = row
                    assert [table[t] for t in tokens] == [visible(t) for t in c["tokens"]]
                    assert acts == pytest.approx(c["activations"], rel=1e-3, abs=1e-9)
                    assert (seq, pos, focus) == (c["sequence"], c["position"], c["focus"])
                    assert float(text) == pytest.approx(c["activation"], rel=5e-3)
            lens = card["logit_lens"] or {"top": [], "bottom": []}
            lens = lens["top"] + lens["bottom"]
            assert [table[t] for t in shipped["lens"]] == [visible(t) for t, _ in lens]
            peak = max(a for c in card["top_contexts"] + card["random_contexts"]
                       for a in c["activations"])  # fmt: skip
            assert shipped["peak"] == pytest.approx(peak, rel=1e-3)


def test_markup_in_tokens_never_reaches_the_page_unescaped() -> None:
    page = page_without_plotly(cards_document())
    for raw in ("<b>", '"quoted"'):
        assert raw not in page  # HTML-escaped in tables, \u003c-escaped in the JSON
    assert '<td class="t">&lt;eos&gt;</td>' in page and '<td class="t">↵</td>' in page
    assert "<b>" in json.dumps(card_data(page)[0]["tokens"], ensure_ascii=False)


def test_context_json_handles_non_finite_activations() -> None:
    document = cards_document()
    context = document["saes"][0]["cards"]["features"][0]["top_contexts"][0]
    context["activations"][0] = float("nan")
    data = card_data(page_without_plotly(document))
    feature = str(document["saes"][0]["cards"]["features"][0]["feature"])
    assert data[0]["cards"][feature]["top"][0][5][0] == 0  # the reader counts a NaN as 0
    assert short(float("nan")) is None and short(float("inf")) is None
    assert short(2.0) == 2 and isinstance(short(2.0), int) and short(0.123456) == 0.1235


def test_page_without_cards_has_no_browser() -> None:
    document = cards_document()
    for entry in document["saes"]:
        del entry["cards"], entry["dense_latents"]
    page = page_without_plotly(document)
    assert "Feature browser" not in page and "card-link" not in page and "hashchange" not in page


def test_schema_accepts_reports_with_and_without_cards() -> None:
    document = cards_document()
    validate_report(document, "cards.json")
    for entry in document["saes"]:
        entry.pop("cards"), entry.pop("dense_latents")
    validate_report(document, "plain.json")


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("top_contexts", 0, "tokens", 0), 7, "tokens[0]"),
        (("why",), ["popular"], "why[0]"),
        (("top_contexts", 0, "focus"), -1, "focus"),
        (("neighbours", 0), {"feature": 290}, "neighbours[0]"),
    ],
)
def test_schema_rejects_malformed_cards(path: tuple, value: Any, where: str) -> None:
    document = cards_document()
    target = document["saes"][0]["cards"]["features"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(InputError, match=re.escape(where)):
        validate_report(document, "bad.json")


def test_markdown_dense_table_and_one_line_per_card() -> None:
    md = render_markdown(cards_document())
    assert "| 290 | 90.00% | position | position corr. 0.97 |" in md
    assert "| 134 | 90.00% | antipodal_pair | antipodal cos. -0.98 with 294 |" in md
    lines = [line for line in md.splitlines() if line.startswith("- feature ")]
    assert len(lines) == sum(len(f) for f in CARD_IDS.values())
    # card 290 (seed 3): top context is NASTY[:5] + PLAIN[:3] with the focus at index 1
    assert (
        "- feature 290 (always_on; density 90.00% (88.00–92.00%); position (position corr."
        ' 0.97)): &lt;b&gt; **&amp;amp;** "quoted"↵ it\'s the cat sat'
    ) in lines
    assert "- feature 7 (sample; density 0.20%): &lt;b&gt; **&amp;amp;**" in md
    assert "<b>" not in md and "</td>" not in md


def test_markdown_escapes_emphasis_inside_tokens() -> None:
    document = cards_document()
    card = document["saes"][1]["cards"]["features"][0]
    card["top_contexts"] = card["top_contexts"][2:]  # PLAIN[:2] + NASTY[7:], focus "_u_"
    md = render_markdown(document)
    card12 = next(line for line in md.splitlines() if line.startswith("- feature 12 "))
    assert card12.endswith("): the cat\\*star\\***\\_u\\_**&lt;/td&gt;")


def run_cli(tmp_path: Path, *args: str) -> Any:
    path = write_report(cards_document(), tmp_path / "run.json")
    return CliRunner().invoke(app, ["report", str(path), *args], env={"COLUMNS": "200"})


def test_cli_feature_prints_the_card_of_each_entry_that_has_it(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--feature", "294")
    assert result.exit_code == 0, result.output
    out = result.output
    assert (
        "feature 294 · SAE 0 llama-2-7b-L22" in out and "feature 294 · SAE 1 llama-2-7b-L28" in out
    )
    assert "class first_token (first-token share 0.99)" in out
    assert "density 90.00% (88.00–92.00%)" in out
    # card 294 of entry 0 (seed 4): top context 1 is NASTY[:6] + PLAIN[:3], focus index 1
    assert ('<b>:2.5 [␣&amp;:5] ␣"quoted":2.5 ↵ ␣it\'s ␣ ␣the ␣cat ␣sat') in out
    assert "␣on ␣mat .:0.375 [↵:0.75]" in out  # the random context, its focus a newline
    assert "promotes: <eos> +2.5, ␣&co +1.25" in out and "suppresses: ↵ -3" in out
    assert "neighbours: none" in out  # 294 of entry 0 has none
    assert "metric" not in out  # the card alone, not the whole report


def test_cli_feature_with_sae_chooses_one_entry(tmp_path: Path) -> None:
    for choice in ("1", "llama-2-7b-L28"):
        result = run_cli(tmp_path, "--feature", "294", "--sae", choice)
        assert result.exit_code == 0, result.output
        assert "SAE 1 llama-2-7b-L28" in result.output and "SAE 0" not in result.output
    result = run_cli(tmp_path, "--feature", "134")
    assert "neighbours: 294 (cos 0.5)" in result.output


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("saedoctor: error:"), result.output
    return lines[0]


def test_cli_missing_card_is_one_line_exit_2(tmp_path: Path) -> None:
    line = one_error_line(run_cli(tmp_path, "--feature", "389"))
    assert str(tmp_path / "run.json") in line and "no card for feature 389" in line
    assert (
        "SAE 0 llama-2-7b-L22: 7, 41, 290, 294" in line
        and "SAE 1 llama-2-7b-L28: 12, 134, 294" in line
    )
    line = one_error_line(run_cli(tmp_path, "--feature", "7", "--sae", "1"))
    assert "no card for feature 7" in line and "SAE 0" not in line
    assert "--sae 'L99'" in one_error_line(run_cli(tmp_path, "--feature", "7", "--sae", "L99"))
    assert "--sae" in one_error_line(run_cli(tmp_path, "--sae", "1"))
    html_out = tmp_path / "r.html"
    one_error_line(run_cli(tmp_path, "--feature", "389", "--html", str(html_out)))
    assert not html_out.exists()  # the bad request is refused before anything is written


def test_missing_card_error_abbreviates_a_long_id_list() -> None:
    document = cards_document()
    features = document["saes"][0]["cards"]["features"]
    features += [dict(features[0], feature=1000 + i) for i in range(20)]
    with pytest.raises(InputError) as err:
        find_cards(document, 5, "0", "run.json")
    listed = str(err.value).split("SAE 0 llama-2-7b-L22: ")[1]
    assert listed.startswith("7, 41, 290, 294, 1000, 1001") and "… (+12)" in listed


def test_terminal_report_lists_dense_latents_and_card_ids(tmp_path: Path) -> None:
    result = run_cli(tmp_path)
    assert result.exit_code == 0, result.output
    assert "dense latents" in result.output and "position corr. 0.97" in result.output
    assert "feature cards: 7, 41, 290, 294" in result.output


def test_reading_cards_is_lenient_about_optional_parts() -> None:
    entry = cards_document()["saes"][1]
    entry["cards"]["features"][0]["top_contexts"][0]["focus"] = 99  # outside the window
    cards = entry_cards(entry, 1)
    assert [c.feature for c in cards.cards] == [12, 134, 294]
    assert cards.cards[0].top_contexts[0].focus is None and not cards.cards[0].has_logit_lens
    assert cards.anchor(134) == "card-1-134" and cards.anchor(5) is None


@pytest.mark.parametrize("token", ["", " ", "\n", "\t", "\r\n", "a b", "\x00", "<&>"])
def test_visible_token_never_blank(token: str) -> None:
    shown = visible_token(token)
    assert shown and not any(ch.isspace() or ord(ch) < 0x20 for ch in shown)
    naive = {
        "": "∅",
        " ": "␣",
        "\n": "↵",
        "\t": "⇥",
        "\r\n": "␍↵",
        "a b": "a␣b",
        "\x00": "␀",
        "<&>": "<&>",
    }
    assert shown == naive[token]
