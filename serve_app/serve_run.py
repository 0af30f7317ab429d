"""`python -m serve_app.serve_run CONFIG [--dashboard]`: `serve run CONFIG` on a local Ray
cluster started here, without Ray's dashboard unless asked (what `bgremove serve` runs).

`serve run` starts its local cluster with every default, the dashboard included: a head process
and its module subprocesses (~0.5-1 GB RSS on one machine) serving a web UI, the Jobs API and
the REST API behind `serve status` / `serve deploy`. One machine running this service needs
none of them; Prometheus metrics come from each node's agent, which still runs. `serve run`
uses a Ray that is already initialised, so this module starts it and hands over.
`BGR_METRICS_PORT` fixes the Prometheus port (default: one Ray picks). `--host ADDRESS` serves
the config with its `http_options.host` replaced (the container image binds 0.0.0.0 this way,
with API keys on; the config itself binds loopback).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def with_host(config: str, host: str, folder: str) -> str:
    """A copy of the Serve config file `config` in `folder` whose HTTP proxy binds `host`."""
    import yaml

    doc = yaml.safe_load(Path(config).read_text())
    doc.setdefault("http_options", {})["host"] = host
    copy = Path(folder) / Path(config).name
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(copy)


def main(argv: list[str]) -> None:
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import cli

    dashboard = "--dashboard" in argv
    args = [a for a in argv if a != "--dashboard"]
    host = None
    if "--host" in args:
        at = args.index("--host")
        host, args = args[at + 1], args[:at] + args[at + 2:]
    port = os.environ.get("BGR_METRICS_PORT")  # Prometheus text from the node's agent
    # glibc gives every thread that allocates its own arena (up to 8 per core); replicas with
    # many threads and large frames then keep growing for a while (docs/benchmarks.md, soak).
    # Ray's processes inherit this from here; an operator's own value wins.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    ray.init(namespace=SERVE_NAMESPACE, include_dashboard=dashboard,
             _metrics_export_port=int(port) if port else None)
    with tempfile.TemporaryDirectory(prefix="bgr-serve-") as folder:
        if host is not None:
            args = [with_host(args[0], host, folder), *args[1:]]
        cli.main(["run", *args], prog_name="serve")


if __name__ == "__main__":
    main(sys.argv[1:])
