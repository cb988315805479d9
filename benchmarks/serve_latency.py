"""Decode latency of the latent space explorer: HTTP request to PNG image, against a real server.

    python benchmarks/serve_latency.py [RUN] [--requests 300]

Starts ``python -m vaelab serve RUN`` on a free loopback port (with no RUN it first trains the
default-size model, MLP 784-400-20 on mnist5k, for 2 epochs into a temporary folder), then
sends POST /api/decode with a fresh random z each time over one keep-alive connection, one
request at a time as the page does (a slider move waits for the previous answer), and times
each round trip until the PNG bytes are in hand. Prints the median and 95th percentile, and
the same for the decode + PNG work alone in-process (no HTTP), to show what HTTP adds. A
conditional run decodes under its first class (and the covariates of test example 0).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"median {statistics.median(ms):6.2f} ms, p95 {q[94]:6.2f} ms, max {max(ms):6.2f} ms"


def wait_until_up(port: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server stopped: {proc.communicate()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/info")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not answer in time")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run folder (default: train MLP 784-400-20 for 2 epochs)")
    parser.add_argument("--requests", type=int, default=300, help="timed decode requests")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    args = parser.parse_args()

    import vaelab

    tmp = tempfile.TemporaryDirectory()
    run = args.run
    if run is None:
        print("training the default model (MLP 784-400-20, mnist5k) for 2 epochs ...", flush=True)
        model, _ = vaelab.train(epochs=2, eval_k=0, device="cpu", out=tmp.name, name="bench",
                                figures=False, progress=False, log=lambda m: None)
        run = str(model.run_dir)
    model = vaelab.load(run, device="cpu")
    d = model.latent_dim
    arch = f"{model.config.net.upper()} {'x'.join(map(str, model.x_shape))}-{'-'.join(map(str, model.config.hidden))}-{d}"
    given: dict[str, object] = {}  # the context of a conditional model: its first class, test example 0's covariates
    if model.class_names:
        given["label"] = model.class_names[0]
    if any(v.kind == "continuous" for v in model.spec.context):
        given["context_of"] = 0

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "serve", run, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        g = torch.Generator().manual_seed(0)
        times = []
        for i in range(args.warmup + args.requests):
            body = json.dumps({"z": torch.randn(d, generator=g).tolist(), **given})
            t0 = time.perf_counter()
            conn.request("POST", "/api/decode", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            doc = json.loads(response.read())
            png = base64.b64decode(doc["image"]["png"].split(",", 1)[1])
            t1 = time.perf_counter()
            assert response.status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n", doc
            if i >= args.warmup:
                times.append(1000 * (t1 - t0))
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    from vaelab.serve import Explorer

    ex = Explorer(model, map_points=1)
    c = ex.context(given.get("label"), given.get("context_of"))  # type: ignore[arg-type]
    local = []
    for i in range(args.warmup + args.requests):
        z = torch.randn(d, generator=g)
        t0 = time.perf_counter()
        ex.decode(z, c)
        if i >= args.warmup:
            local.append(1000 * (time.perf_counter() - t0))

    print(f"model: {arch} ({model.config.likelihood}), torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"decode round trip, HTTP POST /api/decode -> PNG, {len(times)} requests: {percentiles(times)}")
    print(f"decode + PNG in-process (no HTTP),             {len(local)} calls:    {percentiles(local)}")


if __name__ == "__main__":
    main()
