"""Predict through Bouncer's raw ASGI route against the same predict in an app mounted with ``mount_asgi_app``.

Issue 23 (item 2) asked to choose between keeping what BentoML makes hard in ASGI middleware
(predict's raw route, the guards) and moving it into one Starlette app mounted the supported
way. The guards must stand in front of BentoML's own ``@api`` routes too, so they stay ASGI
middleware (``add_asgi_middleware``, BentoML's public API) whichever way; what could move is the
raw predict route. One server answers both paths (``mounted_predict_service``), the rounds
interleaved, the same client, the same uploads:

    .venv/bin/python benchmarks/http_layer.py          # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.loadgen import drive, multipart_request, run  # noqa: E402
from benchmarks.workspace import model_to_measure, workspace  # noqa: E402
from training.jobs.processes import bentoml_serve_command, free_port, running  # noqa: E402

SERVICE = "benchmarks.mounted_predict_service:Bouncer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per round and path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", help="serve this existing model version (uses your env's stores)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with workspace(args.workdir, prefix="bouncer-http-layer-") as root:
        env, tag = model_to_measure(root, args.tag)
        env = {**env, "BOUNCER_MODEL_TAG": tag, "BOUNCER_PREDICTION_LOG": "false"}
        images = sorted((Path(env["BOUNCER_DATA_DIR"]) / "test").glob("*/*.png"))[:64]
        port = free_port()
        paths = {"raw route (middleware)": "/predict", "mounted app (mount_asgi_app)": "/mounted/predict"}
        bodies = {
            name: [multipart_request("127.0.0.1", port, path, [("image", i.name, i.read_bytes())]) for i in images]
            for name, path in paths.items()
        }
        rates: dict[str, list[float]] = {name: [] for name in paths}
        with running(
            bentoml_serve_command(SERVICE, port),
            ready_url=f"http://127.0.0.1:{port}/readyz",
            log=root / "server.log",
            env=env,
            cwd=PROJECT,
        ):
            for round_ in range(args.rounds):
                for name in paths:
                    result = run(
                        drive(
                            name, "127.0.0.1", port, bodies[name], clients=args.clients, seconds=args.seconds, warmup=2
                        )
                    )
                    assert result.non_2xx == 0, result.first_error
                    rates[name].append(result.throughput)
                    print(f"round {round_ + 1}: {result.line()}", flush=True)
        raw, mounted = (statistics.median(rates[name]) for name in paths)
        print(f"\nmedian of {args.rounds} interleaved rounds, {args.clients} clients, model {tag}:")
        print(f"  raw route      {raw:8.1f} req/s")
        print(f"  mounted app    {mounted:8.1f} req/s   x{mounted / raw:.2f} of the raw route")


if __name__ == "__main__":
    main()
