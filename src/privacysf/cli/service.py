"""``privacysf server ...`` (operator) and ``privacysf center ...`` (hospital) commands of the service.

Kept apart from ``cli.py`` so the core command line stays small; :func:`add_commands` registers both
groups on the main parser. Each command is a thin call into the library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privacysf.config import MAPPER_RUNTIMES
from privacysf.errors import ConfigError

MiB = 1024 * 1024


def positive_int(text: str) -> int:
    """An argparse type for sizes: a bound of 0 or less would refuse everything."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _service_config(args: argparse.Namespace):
    from privacysf.server.settings import ServiceConfig

    cfg = ServiceConfig(store=Path(args.store), db_url=args.db)
    bounds = (
        "max_map_codes",
        "map_seconds",
        "max_concurrent_uploads",
        "body_timeout_seconds",
        "header_timeout_seconds",
    )
    for key in ("host", "port", "threads", "mapper_runtime", *bounds):
        if getattr(args, key, None) is not None:
            setattr(cfg, key, getattr(args, key))
    if getattr(args, "max_upload_mb", None) is not None:
        cfg.max_upload_bytes = args.max_upload_mb * MiB
    if getattr(args, "max_job_training_mb", None) is not None:
        cfg.max_job_training_bytes = args.max_job_training_mb * MiB
    if getattr(args, "job_lease", None) is not None:
        cfg.job_lease_seconds = args.job_lease
    cfg.in_process_worker = not getattr(args, "no_worker", False)
    return cfg


def _store(args: argparse.Namespace):
    from privacysf.server.store import Store

    return Store(_service_config(args))


def cmd_server_serve(args: argparse.Namespace) -> None:
    from privacysf.server.service.app import serve

    serve(_service_config(args))


def cmd_server_worker(args: argparse.Namespace) -> None:
    from privacysf.server.jobs import run_worker

    run_worker(_service_config(args))


def cmd_server_create_center(args: argparse.Namespace) -> None:
    store = _store(args)
    token_id, token = store.create_center(args.center, args.days)
    print(f"center {args.center!r} created; token id {token_id}, {_expiry(store, token)}.")
    print("The token (shown once, keep it secret):")
    print(token)


def cmd_server_create_token(args: argparse.Namespace) -> None:
    store = _store(args)
    token_id, token = store.create_token(args.center, args.days)
    print(f"new token id {token_id} for {args.center!r}, {_expiry(store, token)} (shown once):")
    print(token)


def _expiry(store, token: str) -> str:
    return f"expires {store.authenticate(token).token_expires_at:%Y-%m-%d %H:%M} UTC"


def cmd_server_revoke_token(args: argparse.Namespace) -> None:
    center = _store(args).revoke_token(args.token_id)
    print(f"token {args.token_id} of {center!r} revoked")


def cmd_server_tokens(args: argparse.Namespace) -> None:
    for row in _store(args).list_tokens():
        print(
            f"{row['id']:5d}  {row['center']:20s}  {row['state']:8s}  "
            f"created {row['created_at']:%Y-%m-%d %H:%M}  expires {row['expires_at']:%Y-%m-%d %H:%M} UTC"
        )


def _client(args: argparse.Namespace):
    from privacysf.center.client import ServiceClient

    return ServiceClient.from_profile(Path(args.profile) if args.profile else None)


def cmd_center_login(args: argparse.Namespace) -> None:
    from privacysf.center.client import Profile, ServiceClient, default_profile

    client = ServiceClient(args.url, args.token)
    try:
        me = client.me()
    finally:
        client.close()
    path = Path(args.profile) if args.profile else default_profile()
    Profile(args.url, args.token).save(path)
    print(f"logged in to {args.url} as center {me['name']!r}; login saved to {path}")


def cmd_center_rotate_token(args: argparse.Namespace) -> None:
    from privacysf.center.client import Profile, ServiceClient, default_profile

    path = Path(args.profile) if args.profile else default_profile()
    profile = Profile.load(path)
    client = ServiceClient(profile.url, profile.token)
    try:
        rotated = client.rotate_token()
    finally:
        client.close()
    Profile(profile.url, rotated["token"]).save(path)
    print(f"new token id {rotated['id']} (expires {rotated['expires_at']}) saved to {path};")
    print(f"the previous token stops working at {rotated['previous_token_ends_at']}")


def cmd_center_upload(args: argparse.Namespace) -> None:
    from privacysf.workflows.remote import upload_run

    row = upload_run(_client(args), Path(args.run), args.name, args.device)
    print(f"dataset {row['id']} uploaded: {row['train_count']} train + {row['val_count']} val code pairs")
    print(f"({row['size_bytes']} bytes of codes, sha256 {row['sha256'][:16]}…)")


def cmd_center_train(args: argparse.Namespace) -> None:
    client = _client(args)
    train = {"epochs": args.epochs} if args.epochs else {}
    mapper = dict(_setting(item) for item in args.mapper)
    job = client.start_job(args.datasets, args.name, train=train, **({"mapper": mapper} if mapper else {}))
    print(f"job {job['id']} queued")
    if args.wait:
        _print_job(client.wait_job(job["id"]))


def _setting(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--mapper``: the value read as JSON (numbers, true/false), else as text."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--mapper takes KEY=VALUE (e.g. kind=poly), not {item!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def cmd_center_status(args: argparse.Namespace) -> None:
    client = _client(args)
    if args.log:
        for line in client.job_log(args.job):
            print(f"{line['at']}  {line['message']}")
    _print_job(client.job(args.job))


def cmd_center_delete_dataset(args: argparse.Namespace) -> None:
    _client(args).delete_dataset(args.dataset)
    print(f"dataset {args.dataset} deleted; models already trained on it stay")


def cmd_center_cancel(args: argparse.Namespace) -> None:
    job = _client(args).cancel_job(args.job)
    state = "cancelled" if job["status"] == "cancelled" else "stops after the epoch in flight"
    print(f"job {job['id']} {state}")


def _print_job(job: dict) -> None:
    print(json.dumps(job, indent=2))


def cmd_center_models(args: argparse.Namespace) -> None:
    for m in _client(args).models():
        print(f"model {m['id']}: {m['name']} v{m['version']} (job {m['job_id']}, grid {m['grid']})")


def cmd_center_segment(args: argparse.Namespace) -> None:
    from privacysf.workflows.remote import segment_remote

    out = segment_remote(
        _client(args), args.model, Path(args.run), Path(args.image), Path(args.output), args.device
    )
    print(f"mask written to {out} (codes mapped by model {args.model} on the server)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser("server", help="run and administer the server service").add_subparsers(
        dest="action", required=True
    )

    def server_command(name: str, func, help: str) -> argparse.ArgumentParser:
        parser = server.add_parser(name, help=help)
        parser.add_argument("--store", default="psf-store", help="folder of the service's state")
        parser.add_argument("--db", help="SQLAlchemy URL (default: SQLite in the store folder)")
        parser.set_defaults(func=func)
        return parser

    serve = server_command("serve", cmd_server_serve, "run the HTTP service (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, help="torch CPU threads (default 1)")
    serve.add_argument("--max-upload-mb", type=positive_int, help="largest dataset upload (default 512)")
    serve.add_argument("--max-map-codes", type=int, help="most codes per mapping request (default 1024)")
    serve.add_argument(
        "--map-seconds", type=float, help="longest a mapping request may compute before 413 (default 60)"
    )
    serve.add_argument(
        "--max-concurrent-uploads", type=int, help="uploads received at once; more get 503 (default 4)"
    )
    serve.add_argument(
        "--body-timeout-seconds",
        type=float,
        help="longest wait for the next part of a request body before 408 (default 30)",
    )
    serve.add_argument(
        "--header-timeout-seconds",
        type=float,
        help="longest a request head may take to arrive, however it trickles, before 408 (default 10)",
    )
    serve.add_argument(
        "--mapper-runtime",
        choices=MAPPER_RUNTIMES,
        help="what answers mapping requests for unet and cnn models (default onnxruntime, faster for "
        "one query at a time; torch needs no ONNX packages)",
    )
    serve.add_argument(
        "--no-worker", action="store_true", help="run no job worker here (`privacysf server worker` does)"
    )
    worker = server_command(
        "worker", cmd_server_worker, "run one job worker (any number, on any host sharing --db and --store)"
    )
    for parser, refusal in [
        (serve, "larger uploads get 413 and larger jobs 400"),
        (worker, "larger jobs fail here; keep it at the server's"),
    ]:
        parser.add_argument(
            "--job-lease", type=float, help="seconds without heartbeat before a job is re-queued (default 60)"
        )
        parser.add_argument(
            "--max-job-training-mb",
            type=positive_int,
            help=f"most memory one training job's codes may take as float32; {refusal} (default 4096)",
        )
    worker.add_argument("--threads", type=int, help="torch CPU threads (default 1)")
    for name, func, help in [
        ("create-center", cmd_server_create_center, "add a center, print its token"),
        ("create-token", cmd_server_create_token, "another token for a center"),
    ]:
        issue = server_command(name, func, help)
        issue.add_argument("center", help="center name")
        issue.add_argument("--days", type=int, help="token lifetime in days (default 90)")
    server_command("revoke-token", cmd_server_revoke_token, "revoke a token by id").add_argument(
        "token_id", type=int
    )
    server_command("tokens", cmd_server_tokens, "list tokens (ids, centers, state, expiry; never the tokens)")

    center = commands.add_parser("center", help="a center's client of the server service").add_subparsers(
        dest="action", required=True
    )

    def center_command(name: str, func, help: str) -> argparse.ArgumentParser:
        parser = center.add_parser(name, help=help)
        parser.add_argument("--profile", help="login file (default ~/.config/privacysf/center.json)")
        parser.set_defaults(func=func)
        return parser

    login = center_command("login", cmd_center_login, "check a token with the server and save the login")
    login.add_argument("url", help="server URL, e.g. http://127.0.0.1:8000")
    login.add_argument("token", help="the token printed by `privacysf server create-center`")
    center_command(
        "rotate-token", cmd_center_rotate_token, "replace the saved token with a new one (before it expires)"
    )
    upload = center_command(
        "upload", cmd_center_upload, "encode a fit run's train/val data, upload the codes"
    )
    upload.add_argument("run", help="run folder written by privacysf fit (its center/ models encode)")
    upload.add_argument("--name", required=True, help="dataset label")
    upload.add_argument("--device", help="auto, cpu or cuda")
    train = center_command("train", cmd_center_train, "start a mapper training job on uploaded datasets")
    train.add_argument("datasets", type=int, nargs="+", help="dataset ids")
    train.add_argument("--name", default="mapper", help="model name (each job adds a version)")
    train.add_argument("--epochs", type=int, help="training epochs (server default 30)")
    train.add_argument(
        "--mapper",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a mapper setting (repeatable), e.g. kind=poly for a run that encrypts its queries",
    )
    train.add_argument("--wait", action="store_true", help="wait for the job to finish")
    center_command("cancel", cmd_center_cancel, "cancel a queued or running job").add_argument(
        "job", type=int
    )
    center_command(
        "delete-dataset", cmd_center_delete_dataset, "delete an uploaded dataset (its codes) from the server"
    ).add_argument("dataset", type=int)
    status = center_command("status", cmd_center_status, "a job's status and progress")
    status.add_argument("job", type=int)
    status.add_argument("--log", action="store_true", help="print the job's log first")
    center_command("models", cmd_center_models, "model versions this center took part in")
    segment = center_command("segment", cmd_center_segment, "segment an image file through a served model")
    segment.add_argument("run", help="run folder whose center/ models encode and decode")
    segment.add_argument("model", type=int, help="model id on the server")
    segment.add_argument("image", help="image file or DICOM folder")
    segment.add_argument("output", help="mask file to write (.nii.gz, .nrrd, .mha, .png or .tif)")
    segment.add_argument("--device", help="auto, cpu or cuda")
