"""Scale out and deploy: ``caption-dataset`` (Ray Data), ``serve`` (Ray Serve) and ``deploy-space``
(a Hugging Face Space)."""

from __future__ import annotations

import argparse

from captioner.cli.arguments import CANDIDATES, DECODING, POSITIVE, SOURCE, command, number, whole_number


def run_caption_dataset(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("ray", "ray.data", "pyarrow", purpose="caption-dataset (Ray Data)")
    import sys

    from tqdm import tqdm

    from captioner.serving.logfile import default_log_path, output_to
    from captioner.serving.ray_data import caption_dataset

    log_path = args.log_file or default_log_path("caption-dataset")
    print(f"Ray's messages go to {log_path}", file=sys.stderr, flush=True)
    bar = None
    try:
        with output_to(log_path) as terminal:
            def progress(done: int, total: int) -> None:
                nonlocal bar
                bar = bar or tqdm(total=total, unit="image", desc="captioning", file=terminal, dynamic_ncols=True)
                bar.update(done - bar.n)

            run = caption_dataset(args.source, args.out, address=args.address, workers=args.workers,
                                  gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                                  batch_size=args.batch_size, model=args.model, options=args.decoding,
                                  resume=args.resume, path_column=args.path_column, fmt=args.format,
                                  rows_per_part=args.rows_per_part, backend=args.backend,
                                  precision=args.precision, progress=progress)
            if bar is not None:
                bar.close()
    finally:
        if bar is not None and not bar.disable:
            bar.disable = True  # stopped: the terminal stream is closed
    print(run.summary())
    return 0


def add_caption_dataset(sub) -> None:
    p = command(sub, "caption-dataset", run_caption_dataset, parents=[SOURCE, DECODING, CANDIDATES],
                help="caption a whole collection on a Ray cluster (Ray Data)",
                description="Caption every image of a folder (recursive), a glob pattern or a CSV / JSON "
                            "Lines / Parquet table of paths, on a Ray cluster, into one file (.jsonl, .csv, "
                            ".parquet) or a folder of parts: one row per input (path, caption, score, "
                            "confidence, candidates, words, top_classes, model, error). Paths may be on any filesystem pyarrow "
                            "knows (s3://, gs://, abfs://, hdfs://). Every worker loads --model with --backend "
                            "on its own device (--gpus-per-worker). Needs: pip install \"captioner[ray]\".")
    p.add_argument("source", metavar="SOURCE", help="folder, glob pattern, or table (.csv, .jsonl, .parquet)")
    p.add_argument("--out", required=True,
                   help="a file: OUT.jsonl, OUT.csv or OUT.parquet (must not exist yet); or a folder, which gets "
                        "part files (part-*.parquet, or part-*.jsonl)")
    p.add_argument("--format", choices=("parquet", "jsonl"), default=None,
                   help="the parts' format when OUT is a folder (default: parquet; jsonl when its name ends in "
                        ".jsonl)")
    p.add_argument("--path-column", default="path", help="the table column holding image paths (default: path)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (ray://host:10001, or auto); default: start a local one")
    p.add_argument("--workers", type=POSITIVE, default=None,
                   help="model workers, each loading the model once (default: the cluster's GPUs, else CPUs)")
    p.add_argument("--gpus-per-worker", type=number(0), default=None,
                   help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-worker", type=number(0, inclusive=False), default=1.0, help="default: 1")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="images per forward pass (default 8)")
    p.add_argument("--rows-per-part", type=POSITIVE, default=1000, help="rows per output part file (default 1000)")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run: keep its rows and caption only the rest")
    p.add_argument("--log-file", default=None, metavar="PATH",
                   help="where Ray's own messages go (default: a new file in the temporary folder, named at start)")


def run_serve(args: argparse.Namespace) -> int:
    from captioner.core.extras import require_extra

    require_extra("ray", "ray.serve", purpose="serve (Ray Serve)")
    import time

    import ray
    from ray import serve

    from captioner.serving.ray_serve import build_app, http_options, use_returning_allocator

    own_cluster = not ray.is_initialized()
    if own_cluster:
        if not args.address:
            use_returning_allocator()  # the local cluster's processes inherit it, Serve's proxy included
        ray.init(address=args.address, **({} if args.address else {"include_dashboard": False}))
    try:
        settings = {name: getattr(args, name) for name in (
            "model", "replicas", "min_replicas", "max_replicas", "gpus_per_replica", "cpus_per_replica",
            "max_batch_size", "batch_wait_ms", "max_upload_mb", "backend", "precision", "request_timeout_s",
            "requests_per_client", "body_budget_mb") if getattr(args, name) is not None}
        application = build_app(settings, ui=not args.no_ui)
        serve.start(http_options=http_options(args.host, args.port))
        serve.run(application, name="captioner", route_prefix="/")
        print(f"serving on http://{args.host}:{args.port}/ (POST /v1/caption, GET /healthz"
              f"{'' if args.no_ui else ', the web UI at /'}); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.delete("captioner")
    finally:
        if own_cluster:
            ray.shutdown()
    return 0


def add_serve(sub) -> None:
    p = command(sub, "serve", run_serve, parents=[SOURCE],
                help="serve captions over HTTP on Ray Serve (REST API and the web UI)",
                description="Run the caption service on Ray Serve: POST /v1/caption (an image as the body "
                            "or a multipart field 'image'; decoding settings as query parameters), "
                            "GET /healthz, and the Gradio app at /. Every replica loads --model with --backend "
                            "on its own device (--gpus-per-replica). Needs: pip install \"captioner[ray]\".")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (ray://host:10001, or auto); default: start a local one")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=whole_number(1, 65535), default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=POSITIVE, default=None, help="a fixed number of replicas (default 1)")
    p.add_argument("--min-replicas", type=whole_number(0), default=None, help="autoscaling: fewest replicas")
    p.add_argument("--max-replicas", type=POSITIVE, default=None, help="autoscaling: most replicas")
    p.add_argument("--gpus-per-replica", type=number(0), default=None,
                   help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-replica", type=number(0, inclusive=False), default=None, help="default: 1")
    p.add_argument("--max-batch-size", type=POSITIVE, default=None,
                   help="concurrent requests per forward pass (default 8)")
    p.add_argument("--batch-wait-ms", type=number(0), default=None,
                   help="how long a request waits for others to share its pass (default 10)")
    p.add_argument("--max-upload-mb", type=number(0, inclusive=False), default=None, help="largest image accepted (default 50)")
    p.add_argument("--request-timeout-s", type=number(0, inclusive=False), default=None,
                   help="time limit of one /v1/caption request, upload included (default 60)")
    p.add_argument("--requests-per-client", type=POSITIVE, default=None,
                   help="/v1/caption requests one client address may have in progress per replica (default 16)")
    p.add_argument("--body-budget-mb", type=number(0, inclusive=False), default=None,
                   help="request bodies a replica holds at once; more waiting uploads are answered 503 "
                        "(default 256)")
    p.add_argument("--no-ui", action="store_true", help="the REST API only, without the Gradio app at /")


def run_deploy_space(args: argparse.Namespace) -> int:
    from captioner.serving.space import print_staged
    from captioner.serving.space_deploy import deploy, stage

    if args.dry_run:
        staged = stage(args.dry_run, args.space_id, model=args.model, bundle_model=args.bundle_model,
                       hardware=args.hardware)
        print_staged(staged)
        print("dry run: nothing was uploaded")
        return 0
    _, url = deploy(args.space_id, model=args.model, bundle_model=args.bundle_model, hardware=args.hardware,
                    private=args.private, commit_message=args.message, progress=print_staged)
    print(url)
    return 0


def add_deploy_space(sub) -> None:
    p = command(sub, "deploy-space", run_deploy_space, help="create or update a Hugging Face Space running the demo",
                description="Stage the app for a Hugging Face Space (app.py, the package, requirements, "
                            "examples, README front matter) and create or update the Space: files, the "
                            "CAPTIONER_MODEL variable, hardware. The token comes from `hf auth login` or "
                            "HF_TOKEN. Publish a model first with `push`, then name it with --model.")
    p.add_argument("space_id", metavar="OWNER/NAME", help="the Space to create or update")
    p.add_argument("--model", default=None, help="owner/name[@revision]: a Hub model the Space downloads at build "
                                                 "time (checked on the Hub, in dry runs too when it can be "
                                                 "reached); or a local model folder, uploaded with the Space "
                                                 "(default: the bundled model, uploaded with the Space)")
    p.add_argument("--bundle-model", action="store_true",
                   help="upload the bundled model (models/default) as well when --model is given; without "
                        "--model it is uploaded anyway")
    p.add_argument("--hardware", default="cpu-basic",
                   help="cpu-basic (default), zerogpu (= zero-a10g), or a GPU flavour such as t4-small")
    p.add_argument("--private", action="store_true", help="create the Space as private (an existing one keeps its "
                                                          "visibility)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", metavar="DIR", default=None,
                   help="stage the Space into DIR (new or empty) and stop: nothing is uploaded")
