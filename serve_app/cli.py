"""`bgremove` command line: model management and selection statistics.

    bgremove models list              # every catalog model, its tier and whether its file is here
    bgremove models pull u2netp ...   # fetch weights (source, then mirrors; checksums verified)
    bgremove models verify [ids]      # re-check files on disk against the catalog checksums
    bgremove models quantize u2netp --calibration DIR   # int8 build (served if verified+gated)
    bgremove selections stats         # win rate of each model per image category (shotgun picks)
    bgremove keys create NAME [--credits N] [--rate-limit N] [--max-jobs N]   # prints the key once
    bgremove keys list | keys revoke NAME | keys limits NAME [--rate-limit N] [--max-jobs N]
    bgremove keys credit NAME AMOUNT  # top up (negative: take back)
    bgremove keys usage NAME          # balance and charges per operation (= GET /v1/usage)
    bgremove k8s render [--repo DIR]  # k8s/*/generated/ from configs/cluster*.yaml

Against a running service ($BGR_URL, default http://localhost:8000; key in $BGR_API_KEY):
    bgremove remove photo.jpg folder/ --out cutouts/ [--effect blur --opt blur_strength=25]
    bgremove shotgun photo.jpg --out results/ [--models u2netp,mediapipe-selfie]
    bgremove video clip.mp4 --out result.webm [--bg-color 0,0,255]
    bgremove hd poster.tif --out poster.png         # any size, through the HD job API
    bgremove usage                                  # this key's balance and charges

Batch runs with Ray Data (no service needed; `--address auto` joins a running Ray cluster):
    bgremove batch photos/ cutouts/ --model u2netp [--workers 2] [--gpus-per-worker 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from pipelines.catalog import load_catalog
from pipelines.download import pull
from pipelines.errors import DownloadError, ServiceError
from pipelines.weights import file_digest, find_weights, int8_refusal, verify
from serve_app.core.settings import get_settings


def _models_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    catalog = load_catalog(settings.catalog_path)
    dirs = settings.model_search_dirs()
    print(f"{'id':28} {'tier':6} {'family':15} {'licence':12} weights")
    rows = [(s.id, s.tier.value, s.family, s) for s in catalog.models]
    rows += [(a.id, "asset", a.group, a) for a in catalog.assets]
    restricted = False
    for model_id, tier, family, spec in rows:
        path = find_weights(spec, dirs)
        licence = spec.weights.license.split(" ")[0]
        if spec.weights.license_terms != "permissive":
            licence, restricted = licence + "*", True
        print(f"{model_id:28} {tier:6} {family:15} {licence:12} "
              f"{path or 'MISSING: ' + spec.weights.file}")
    if restricted:
        print("\n* copyleft or non-commercial weights: served only when the Serve config's "
              "accept_licenses names the licence (docs/models.md).")
    return 0


def _specs(catalog, ids: list[str]) -> list | None:
    """Catalog models and assets named by id, or by asset group (e.g. mobilesam); None and a
    message when an id is unknown."""
    specs, unknown = [], []
    for name in ids:
        if name in catalog.ids:
            specs.append(catalog.get(name))
        elif catalog.asset_group(name):
            specs += catalog.asset_group(name)
        elif name in {a.id for a in catalog.assets}:
            specs += [a for a in catalog.assets if a.id == name]
        else:
            unknown.append(name)
    if unknown:
        known = catalog.ids + sorted({a.group for a in catalog.assets})
        print(f"unknown model id(s): {', '.join(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return None
    return specs


def _models_pull(args: argparse.Namespace) -> int:
    settings = get_settings()
    catalog = load_catalog(settings.catalog_path)
    specs = _specs(catalog, args.ids)
    if specs is None:
        return 2
    from serve_app.core.model_bucket import ModelBucket, ModelBucketError

    bucket = ModelBucket.from_settings(settings, args.to) if args.to else None
    failed = 0
    for spec in specs:
        try:
            path = pull(spec, settings.models_dir.expanduser(), force=args.force)
            print(f"{spec.id}: {path}")
            if bucket is not None:
                keys = bucket.publish(spec, path, settings.model_search_dirs())
                print(f"{spec.id}: published {', '.join(keys)} to {args.to}")
        except DownloadError as exc:
            print(f"{spec.id}: FAILED: {exc.message}", file=sys.stderr)
            failed += 1
        except ModelBucketError as exc:
            print(f"{spec.id}: NOT PUBLISHED: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _models_verify(args: argparse.Namespace) -> int:
    settings = get_settings()
    catalog = load_catalog(settings.catalog_path)
    specs = _specs(catalog, args.ids) if args.ids else [*catalog.models, *catalog.assets]
    if specs is None:
        return 2
    bad = 0
    for spec in specs:
        path = find_weights(spec, settings.model_search_dirs())
        if path is None:
            print(f"{spec.id}: missing")
            continue
        problem = verify(path, spec)
        bad += problem is not None
        print(f"{spec.id}: {'OK' if problem is None else 'BAD: ' + problem} ({path})")
    return 1 if bad else 0


def _models_quantize(args: argparse.Namespace) -> int:
    from pipelines.quantize import build_int8, calibration_images  # onnxruntime's quantiser

    settings = get_settings()
    catalog = load_catalog(settings.catalog_path)
    unknown = [i for i in args.ids if i not in catalog.ids]
    if unknown:
        print(f"not a catalog model: {', '.join(unknown)}", file=sys.stderr)
        return 2
    images = calibration_images(args.calibration)
    if not images:
        print(f"no PNG/JPEG/WebP images in {args.calibration}", file=sys.stderr)
        return 2
    failed = 0
    for spec in map(catalog.get, args.ids):
        source = find_weights(spec, settings.model_search_dirs())
        if source is None:
            print(f"{spec.id}: float weights missing; run `bgremove models pull {spec.id}`",
                  file=sys.stderr)
            failed += 1
            continue
        target = settings.models_dir.expanduser() / spec.weights.int8_file
        partial = target.with_name(target.name + ".partial")
        report = build_int8(spec, source, partial, images)
        partial.replace(target)
        refusal = int8_refusal(spec, target)
        verdict = (f"{refusal}: not served" if refusal
                   else "the verified build, inside its quality gate: served on CPU")
        print(f"{spec.id}: {target} sha256 {file_digest(target)} ({report.calibration_inputs} calibration "
              f"images, {len(report.kept_float)} of {report.nodes} nodes kept in float); "
              f"{verdict}")
    return 1 if failed else 0


def _selections_stats(args: argparse.Namespace) -> int:
    from serve_app.core.store import Store  # SQLAlchemy only when this command runs

    url = args.database_url or get_settings().resolved_database_url()
    store = Store(url)
    try:
        rates = store.win_rates(args.category)
    finally:
        store.close()
    print(f"{'category':20} {'model':28} {'wins':>6} {'offered':>8} {'win rate':>9}")
    for r in rates:
        print(f"{r.category:20} {r.model_id:28} {r.wins:6d} {r.offered:8d} "
              f"{r.win_rate * 100:8.1f}%")
    if not rates:
        print("(no selections recorded)", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _amount(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number")
    return value


def _key_store(args: argparse.Namespace):
    from serve_app.core.keys import KeyStore

    return KeyStore(args.database_url or get_settings().resolved_database_url())


def _keys_create(args: argparse.Namespace) -> int:
    try:
        key, secret = _key_store(args).create(
            args.name, credits=args.credits, rate_limit_per_min=args.rate_limit,
            max_concurrent_jobs=args.max_jobs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(secret)
    print(f"key {key.name!r} created ({key.prefix}...); the secret above is shown only once",
          file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    print(f"{'name':24} {'prefix':14} {'req/min':>8} {'jobs':>5} {'credits':>12} {'created':20} status")
    for k in _key_store(args).list():
        status = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        print(f"{k.name:24} {k.prefix:14} {k.rate_limit_per_min or '-':>8} "
              f"{k.max_concurrent_jobs or '-':>5} {k.credits:12.2f} "
              f"{k.created_at:%Y-%m-%d %H:%M:%S}  {status}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    if not _key_store(args).revoke(args.name):
        print(f"error: no active key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name!r} revoked")
    return 0


def _keys_limits(args: argparse.Namespace) -> int:
    if not _key_store(args).set_limits(args.name, rate_limit_per_min=args.rate_limit,
                                       max_concurrent_jobs=args.max_jobs):
        print(f"error: no key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name!r} updated")
    return 0


def _keys_credit(args: argparse.Namespace) -> int:
    balance = _key_store(args).add_credits(args.name, args.amount)
    if balance is None:
        print(f"error: no key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name!r}: balance {balance:g}")
    return 0


def _keys_usage(args: argparse.Namespace) -> int:
    store = _key_store(args)
    key = store.get(args.name)
    if key is None:
        print(f"error: no key named {args.name!r}", file=sys.stderr)
        return 1
    rows = store.usage(key.key_id)
    print(f"key {key.name!r}: balance {store.balance(key.key_id):g}")
    print(f"{'operation':24} {'count':>7} {'units':>10} {'credits':>12}")
    for r in rows:
        print(f"{r.operation:24} {r.count:7d} {r.units:10g} {r.credits:12g}")
    print(f"{'total':24} {sum(r.count for r in rows):7d} {'':>10} "
          f"{sum(r.credits for r in rows):12g}")
    return 0


def _k8s_render(args: argparse.Namespace) -> int:
    from serve_app.k8s import write

    changed = write(args.repo.resolve())
    print("\n".join(changed) if changed else "k8s manifests are up to date")
    return 0


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def _client(args: argparse.Namespace):
    from serve_app.client import Client

    return Client(args.url, args.api_key)


def _images(inputs: list[Path]) -> list[Path]:
    files = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def _output_options(args: argparse.Namespace) -> dict[str, str]:
    """The output-option flags given (docs/output-options.md) as form fields."""
    options = {name: str(getattr(args, name)) for name in
               ("output", "crop_margin", "max_size", "format", "refine")
               if getattr(args, name) is not None}
    return options | {name: "true" for name in ("crop", "clean_mask") if getattr(args, name)}


def _add_output_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--output", choices=["rgba", "mask"], help="mask: the alpha alone")
    cmd.add_argument("--crop", action="store_true", help="crop to the subject")
    cmd.add_argument("--crop-margin", help="with --crop: pixels (20) or percent (5%%)")
    cmd.add_argument("--max-size", type=_positive, help="longest side in pixels")
    cmd.add_argument("--format", choices=["png", "webp", "jpg"])
    cmd.add_argument("--refine", choices=["none", "matting"],
                     help="matting: refine hair and fur edges (slower)")
    cmd.add_argument("--clean-mask", action="store_true",
                     help="drop specks and fill pinholes in the mask")


def _remove(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serve_app.client import ApiError

    options = dict(o.split("=", 1) for o in args.opt) | _output_options(args)
    suffix = "." + (args.format or "png")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with _client(args) as client:
        for path in tqdm(_images(args.inputs), unit="image", disable=None):
            try:
                png = client.remove(path, args.effect, model=args.model, **options)
            except (ApiError, OSError) as exc:
                print(f"{path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            (args.out / f"{path.stem}{suffix}").write_bytes(png)
    return 1 if failed else 0


def _shotgun(args: argparse.Namespace) -> int:
    import base64

    with _client(args) as client:
        result = client.shotgun(args.image, args.models.split(",") if args.models else None)
    args.out.mkdir(parents=True, exist_ok=True)
    for row in result["results"]:
        if row["status"] == "success":
            (args.out / f"{row['model_id']}.png").write_bytes(base64.b64decode(row["image_base64"]))
        print(f"{row['model_id']:28} {row['status']:8} {row['processing_time_ms']:>7} ms "
              f"${row.get('cost_usd', 0):.6f} {row.get('error') or ''}")
    print(f"job {result['job_id']}: pick one with POST /log-selection")
    return 0


def _video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bar = tqdm(unit="frame", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    with _client(args) as client:
        data = client.video(args.clip, bg_color=args.bg_color, model=args.model,
                            output_format=args.format, on_progress=progress)
    bar.close()
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data)} bytes")
    return 0


def _hd(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with _client(args) as client, tqdm(total=None, unit="poll", disable=None) as bar:
        data = client.hd(args.image, model=args.model, on_poll=lambda: bar.update(),
                         **_output_options(args))
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data)} bytes")
    return 0


def _usage(args: argparse.Namespace) -> int:
    with _client(args) as client:
        usage = client.usage()
    print(json.dumps(usage, indent=2))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serve_app.batch import run_batch

    settings = get_settings()
    bar = tqdm(unit="image", disable=None)
    try:
        summary = run_batch(
            args.input, args.output, model=args.model,
            catalog_path=str(settings.catalog_path),
            search_dirs=[str(d) for d in settings.model_search_dirs()],
            max_pixels=args.max_pixels or settings.hd_max_pixels, workers=args.workers,
            threads_per_worker=args.threads_per_worker, gpus_per_worker=args.gpus_per_worker,
            batch_size=args.batch_size, output_format=args.format, bg_color=args.bg_color,
            address=args.address, on_row=lambda row: bar.update())
    except (ServiceError, FileNotFoundError, ValueError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    done = summary.ok + summary.failed
    print(f"{summary.listed} images: {summary.skipped} already done, {summary.ok} cut out, "
          f"{summary.failed} failed; {done} in {summary.seconds:.1f} s "
          f"({summary.ray_start_s:.1f} s starting Ray): {summary.images_per_s:.2f} images/s "
          f"(manifest: {args.output.rstrip('/')}/manifest.jsonl)")
    return 1 if summary.failed else 0


def _serve(args) -> int:
    from serve_app.launcher import run_service  # noqa: PLC0415

    return run_service(args.config, dashboard=args.dashboard, host=args.host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bgremove")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log lines too: -v requests and steps, -vv debug")
    sub = parser.add_subparsers(dest="group", required=True)
    models = sub.add_parser("models", help="list, pull and verify model weights")
    msub = models.add_subparsers(dest="command", required=True)
    msub.add_parser("list").set_defaults(func=_models_list)
    p = msub.add_parser("pull")
    p.add_argument("ids", nargs="+")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.add_argument("--to", metavar="URL", help="then publish the verified weights to this "
                   "bucket (s3://bucket/prefix), which serving nodes name in BGR_MODELS_URL")
    p.set_defaults(func=_models_pull)
    v = msub.add_parser("verify")
    v.add_argument("ids", nargs="*")
    v.set_defaults(func=_models_verify)
    q = msub.add_parser("quantize", help="build int8 copies of models (docs/models.md)")
    q.add_argument("ids", nargs="+")
    q.add_argument("--calibration", type=Path, required=True,
                   help="folder of calibration photos (bench/calibration_set.py writes the "
                        "committed set)")
    q.set_defaults(func=_models_quantize)
    selections = sub.add_parser("selections", help="which models users pick in shotgun results")
    ssub = selections.add_subparsers(dest="command", required=True)
    st = ssub.add_parser("stats", help="win rate per model and image category")
    st.add_argument("--category", help='one image category ("all": across categories)')
    st.add_argument("--database-url", help="default: the settings' database (BGR_DATABASE_URL)")
    st.set_defaults(func=_selections_stats)
    keys = sub.add_parser("keys", help="API keys (X-Api-Key): create, list, revoke, limits")
    keys.add_argument("--database-url", help="default: the settings' database (BGR_DATABASE_URL)")
    ksub = keys.add_subparsers(dest="command", required=True)
    kc = ksub.add_parser("create", help="a new key; its secret is printed once")
    kc.add_argument("name")
    kc.add_argument("--credits", type=_amount, default=0.0, help="starting credit balance")
    for parser_ in (kc, kl := ksub.add_parser("limits", help="change a key's limits")):
        parser_.add_argument("--rate-limit", type=_positive, help="requests per minute (default: "
                             "BGR_RATE_LIMIT_PER_MIN)")
        parser_.add_argument("--max-jobs", type=_positive, help="jobs in progress at once (default: "
                             "BGR_MAX_CONCURRENT_JOBS)")
    kc.set_defaults(func=_keys_create)
    kl.add_argument("name")
    kl.set_defaults(func=_keys_limits)
    ksub.add_parser("list").set_defaults(func=_keys_list)
    kr = ksub.add_parser("revoke")
    kr.add_argument("name")
    kr.set_defaults(func=_keys_revoke)
    kcr = ksub.add_parser("credit", help="add credits to a key (negative: take some back)")
    kcr.add_argument("name")
    kcr.add_argument("amount", type=_amount)
    kcr.set_defaults(func=_keys_credit)
    ku = ksub.add_parser("usage", help="a key's balance and charges per operation")
    ku.add_argument("name")
    ku.set_defaults(func=_keys_usage)
    k8s = sub.add_parser("k8s", help="Kubernetes manifests")
    k8sub = k8s.add_subparsers(dest="command", required=True)
    kr8 = k8sub.add_parser("render", help="write k8s/*/generated/ from configs/cluster*.yaml")
    kr8.add_argument("--repo", type=Path, default=Path("."), help="repository root (.)")
    kr8.set_defaults(func=_k8s_render)
    sv = sub.add_parser("serve", help="run the service (serve run CONFIG) until Ctrl-C or "
                        "SIGTERM, then stop it and its local Ray cluster cleanly")
    sv.add_argument("config", nargs="?", default="configs/local.yaml")
    sv.add_argument("--dashboard", action="store_true",
                    help="start Ray's dashboard too (web UI on :8265, `serve status`, the Jobs "
                         "API; ~0.5-1 GB more memory)")
    sv.add_argument("--host", help="address the HTTP proxy binds instead of the config's "
                    "(configs/local.yaml: 127.0.0.1); 0.0.0.0 serves other machines, so keep "
                    "API keys on")
    sv.set_defaults(func=_serve)
    b = sub.add_parser("batch", help="cut out a folder (or fsspec URL) of images with Ray Data")
    b.add_argument("input", help="folder, image file or fsspec URL (s3://, gs://, ... with its "
                   "fsspec package installed)")
    b.add_argument("output", help="folder or URL for the cut-outs and manifest.jsonl")
    b.add_argument("--model", default="u2netp", help="catalog id (default u2netp)")
    b.add_argument("--workers", type=_positive, default=1, help="model actors (default 1)")
    b.add_argument("--threads-per-worker", type=_positive, default=1,
                   help="CPU threads (and Ray CPUs) per actor (default 1)")
    b.add_argument("--gpus-per-worker", type=float, default=0, help="e.g. 1 or 0.5 (CUDA)")
    b.add_argument("--batch-size", type=_positive, default=4, help="images per model run")
    b.add_argument("--format", choices=["png", "webp"], default="png")
    b.add_argument("--bg-color", help="flatten onto a colour ('#RRGGBB'); default transparent")
    b.add_argument("--max-pixels", type=_positive, help="default BGR_HD_MAX_PIXELS")
    b.add_argument("--address", help="Ray cluster to join (e.g. auto); default: a local Ray")
    b.set_defaults(func=_batch)
    for name, func, help_ in (("remove", _remove, "cut out images and folders of images"),
                              ("shotgun", _shotgun, "every model on one image, results saved"),
                              ("video", _video, "a clip through the Video API, with progress"),
                              ("hd", _hd, "one image of any size through the HD job API"),
                              ("usage", _usage, "this key's credit balance and charges")):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("--url", help="service URL (default $BGR_URL or http://localhost:8000)")
        cmd.add_argument("--api-key", help="default $BGR_API_KEY")
        cmd.set_defaults(func=func)
        if name == "remove":
            cmd.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
            cmd.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
            cmd.add_argument("--effect", default="matte",
                             choices=["matte", "blur", "color", "gradient", "shadow"])
            cmd.add_argument("--model")
            cmd.add_argument("--opt", action="append", default=[], metavar="FIELD=VALUE",
                             help="an effect option, e.g. blur_strength=25 (repeatable)")
            _add_output_flags(cmd)
        elif name == "shotgun":
            cmd.add_argument("image", type=Path)
            cmd.add_argument("--out", type=Path, required=True, help="folder for the cut-outs")
            cmd.add_argument("--models", help="comma-separated ids (default: all)")
        elif name == "hd":
            cmd.add_argument("image", type=Path)
            cmd.add_argument("--out", type=Path, required=True)
            cmd.add_argument("--model")
            _add_output_flags(cmd)
        elif name == "video":
            cmd.add_argument("clip", type=Path)
            cmd.add_argument("--out", type=Path, required=True)
            cmd.add_argument("--bg-color", help="R,G,B (mp4); default transparent webm")
            cmd.add_argument("--model")
            cmd.add_argument("--format", choices=["webm", "mp4", "mov"])
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return args.func(args)


QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "ray", "asyncio")


def configure_logging(verbose: int) -> None:
    """Results and progress bars only by default; `-v` adds the project's and the HTTP
    requests' log lines, `-vv` everything at DEBUG."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
