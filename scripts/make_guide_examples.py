"""Write docs/examples/guide/{llama-2-7b,finllama,goodfire}.json: the SAE training-quality
guide's three models as saedoctor.report/1 documents, graded by saedoctor's default policy.

The values and where each comes from (the guide, quoted, or invented, with why) live in
tests/guide_models.py; tests/test_guide_examples.py checks the committed files equal this
script's output. Run from anywhere:

    .venv/bin/python scripts/make_guide_examples.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "examples" / "guide"


def render(document: dict) -> str:
    """Stable text: the same document always gives the same bytes."""
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write into")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from guide_models import example_reports

    args.out.mkdir(parents=True, exist_ok=True)
    for name, document in example_reports().items():
        (args.out / name).write_text(render(document), encoding="utf-8")
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
