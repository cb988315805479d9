"""The latent space explorer: a local web app to look inside a trained model (``vaelab serve RUN``).

A face over the Python API, never imported by it. Its rooms:

    explorer.py   the model side: the latent map (PCA when D > 2), dimensions by KL, decoding,
                  sampling, interpolation, scoring an upload; plain values out, no HTTP
    uploads.py    an uploaded PNG/JPEG/.npy file -> one example of the model's shape, or a refusal
    app.py        the JSON API and the page (``create_app(run_dir) -> Starlette``)
    guard.py      the front door: Host (DNS rebinding, IPv6 too), Origin and content-type checks
    server.py     bind the port, print the address, run uvicorn (``serve``)
    connections.py  deadlines for a request's head and body (408), a cap on open connections
    static/       index.html, app.js, style.css: everything the page loads (works offline)

Example::

    from starlette.testclient import TestClient
    from vaelab.serve import create_app
    client = TestClient(create_app("runs/mnist5k-..."))
    client.post("/api/decode", json={"z": [0.0] * 20}).json()["image"]["png"]  # a data URL
"""

from .app import create_app
from .explorer import Explorer
from .server import serve

__all__ = ["create_app", "serve", "Explorer"]
