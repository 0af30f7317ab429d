"""`python -m serve_app.serve_run CONFIG [--dashboard]`: `serve run CONFIG` on a local Ray
cluster started here, without Ray's dashboard unless asked (what `bgremove serve` runs).

`serve run` starts its local cluster with every default, the dashboard included: a head process
and its module subprocesses (~0.5-1 GB RSS on one machine) serving a web UI, the Jobs API and
the REST API behind `serve status` / `serve deploy`. One machine running this service needs
none of them; Prometheus metrics come from each node's agent, which still runs. `serve run`
uses a Ray that is already initialised, so this module starts it and hands over.
`BGR_METRICS_PORT` fixes the Prometheus port (default: one Ray picks).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import cli

    dashboard = "--dashboard" in argv
    args = [a for a in argv if a != "--dashboard"]
    port = os.environ.get("BGR_METRICS_PORT")  # Prometheus text from the node's agent
    ray.init(namespace=SERVE_NAMESPACE, include_dashboard=dashboard,
             _metrics_export_port=int(port) if port else None)
    cli.main(["run", *args], prog_name="serve")


if __name__ == "__main__":
    main(sys.argv[1:])
