"""The options every run command shares, and how they become one :class:`ExperimentConfig`.

Each option is a shorthand for a ``--set section.key=value`` override, applied on top of the defaults
and an optional ``--config`` file, so the saved ``config.json`` says exactly what a run used.
"""

from __future__ import annotations

import argparse
import json

from privacysf.config import ExperimentConfig


def add_config_options(parser: argparse.ArgumentParser, default_dataset: str | None = None) -> None:
    parser.add_argument("--config", help="JSON or YAML file with config sections (data, train, ...)")
    parser.add_argument("--dataset", default=default_dataset, help="built-in name or folder")
    parser.add_argument("--size", type=int, help="working image size (default 128)")
    parser.add_argument("--epochs", type=int, help="training epochs per network")
    parser.add_argument("--seed", type=int, help="seed of the split and of training")
    parser.add_argument("--device", help="auto (default), cpu or cuda")
    parser.add_argument("--out", help="folder that receives the run folder (default runs/)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (one line per network still prints)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set train.lr=3e-4 (repeatable)",
    )


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    cfg = ExperimentConfig.load(args.config) if args.config else ExperimentConfig()
    sets = []
    for key, value in (
        ("data.dataset", args.dataset),
        ("data.size", args.size),
        ("train.epochs", args.epochs),
        ("data.seed", args.seed),
        ("train.seed", args.seed),
        ("train.device", args.device),
        ("output_dir", args.out),
    ):
        if value is not None:
            sets.append(f"{key}={json.dumps(value)}")
    if args.quiet:
        sets.append("train.progress=false")
    return cfg.override(sets + args.set)


def section_overrides(section: str, options: dict[str, object]) -> list[str]:
    """``--set``-style overrides of one config section for the command-line options that were given."""
    return [f"{section}.{name}={json.dumps(value)}" for name, value in options.items() if value]
