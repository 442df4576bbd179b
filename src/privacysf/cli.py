"""``privacysf``: a thin command line over the library; every command writes a run folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from privacysf.config import ExperimentConfig
from privacysf.errors import PrivacySFError


def _add_config_options(parser: argparse.ArgumentParser, default_dataset: str | None = None) -> None:
    parser.add_argument("--config", help="JSON or YAML file with config sections (data, train, ...)")
    parser.add_argument("--dataset", default=default_dataset, help="built-in name or folder")
    parser.add_argument("--size", type=int, help="working image size (default 128)")
    parser.add_argument("--epochs", type=int, help="training epochs per network")
    parser.add_argument("--seed", type=int, help="seed of the split and of training")
    parser.add_argument("--device", help="auto (default), cpu or cuda")
    parser.add_argument("--out", help="folder that receives the run folder (default runs/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
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


def cmd_data_list(args: argparse.Namespace) -> None:
    from privacysf.data.registry import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.name:16s} {spec.num_classes} classes  {spec.description}")
        print(f"{'':16s} source: {spec.source}; licence: {spec.licence}; get it: {spec.how_to_get}")


def cmd_data_show(args: argparse.Namespace) -> None:
    from privacysf.data.prepare import describe, prepare
    from privacysf.figures import overlay_grid, pick_rows
    from privacysf.runs import write_json

    cfg = build_config(args)
    data = prepare(cfg.data)
    info = describe(data)
    out = Path(args.out or "runs") / f"data-{Path(cfg.data.dataset).name}"
    write_json(out / "summary.json", info)
    rows = pick_rows(data.train.masks, 8)
    overlay_grid(
        out / "montage.png",
        data.train.images[rows, 0],
        {"mask": data.train.masks[rows]},
        data.info.num_classes,
        data.info.display_rotations,
    )
    print(json.dumps(info, indent=2))
    print(f"montage: {out / 'montage.png'}")


def cmd_baseline_train(args: argparse.Namespace) -> None:
    from privacysf.baseline.run import train_baseline
    from privacysf.evaluation import headline

    run_dir, metrics = train_baseline(build_config(args))
    print(f"raw U-Net on {metrics['dataset']}: {headline(metrics['test'])}")
    print(f"run folder: {run_dir}")


def cmd_baseline_eval(args: argparse.Namespace) -> None:
    from privacysf.baseline.run import eval_baseline
    from privacysf.evaluation import headline

    out_dir, metrics = eval_baseline(Path(args.run), args.set)
    print(f"raw U-Net on {metrics['dataset']}: {headline(metrics['test'])}")
    print(f"results: {out_dir}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privacysf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="built-in datasets and dataset folders").add_subparsers(
        dest="action", required=True
    )
    data.add_parser("list", help="list the built-in datasets").set_defaults(func=cmd_data_list)
    show = data.add_parser("show", help="counts, shapes, spacing, classes and a montage")
    show.add_argument("name", help="built-in name or folder")
    _add_config_options(show)
    show.set_defaults(func=cmd_data_show)

    baseline = commands.add_parser("baseline", help="raw-image MONAI U-Net (upper bound)")
    base_cmds = baseline.add_subparsers(dest="action", required=True)
    train = base_cmds.add_parser("train", help="train and evaluate on the test split")
    _add_config_options(train)
    train.set_defaults(func=cmd_baseline_train)
    evaluate = base_cmds.add_parser("eval", help="re-evaluate a trained run folder")
    evaluate.add_argument("run", help="run folder written by baseline train")
    evaluate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    evaluate.set_defaults(func=cmd_baseline_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if getattr(args, "name", None) is not None:
        args.dataset = args.name
    try:
        args.func(args)
    except PrivacySFError as exc:
        print(f"privacysf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privacysf: interrupted; files already written are intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
