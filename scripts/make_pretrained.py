"""Ship a trained run's weights with the package: ``src/convlstm/pretrained/NAME/``.

Usage (from the repository root)::

    python scripts/make_pretrained.py RUN_DIR NAME [--card CARD.toml] [--out DIR] [--overwrite]

RUN_DIR is a ``convlstm train`` run folder (``best.pt``, ``config.yaml``, ``metrics.jsonl`` and
the final report's ``report/metrics.json``); NAME a registered model name
(``convlstm.models.list_models()``), so that ``create_model(NAME, pretrained=True)`` loads the
result. CARD is a TOML or JSON file of model card fields (``title``, ``summary``, ``data``,
``compute``, ``command``, ``seed``, ``limitations``, ``notes``). The folder is written
atomically (:func:`convlstm.pretrained.export_pretrained`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from convlstm.checkpoint import CheckpointError
from convlstm.models import list_models
from convlstm.pretrained import export_pretrained

TARGET = Path(__file__).resolve().parents[1] / "src" / "convlstm" / "pretrained"


def _card(path: str | None) -> dict[str, object]:
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    card = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    if not isinstance(card, dict):
        raise ValueError(f"--card {path} must hold a table of card fields")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make_pretrained", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the convlstm train run folder")
    parser.add_argument("name", metavar="NAME", choices=list_models(), help="model name")
    parser.add_argument("--card", metavar="FILE", help="model card fields (.toml or .json)")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint in RUN_DIR")
    parser.add_argument("--out", metavar="DIR", help="write here instead (a preview)")
    parser.add_argument("--overwrite", action="store_true", help="replace shipped weights")
    args = parser.parse_args(argv)
    try:
        folder = export_pretrained(
            args.run_dir,
            args.out or TARGET / args.name,
            card=_card(args.card),
            checkpoint=args.checkpoint,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:
        print(f"make_pretrained: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError, CheckpointError) as error:
        print(f"make_pretrained: error: {error}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"wrote {folder} ({size:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
