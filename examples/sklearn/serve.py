#!/usr/bin/env python3
"""The prediction server: one model version behind HTTP.

    POST /predict  {"instances": [[30 numbers], ...]}  ->  {"predictions": [0 or 1, ...], "version": N}
    GET  /health                                        ->  {"status": "ok", "version": N}

It loads the artifact from --artifact: the workers pass the copy whose digest
they verified (MODELREG_ARTIFACT_PATH), so what is loaded is what was
registered (a pickle is code: never load one you have not verified). It binds
127.0.0.1:--port (0: a free port the system picks) and, once listening, writes
its URL to --ready-file.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    with open(args.artifact, "rb") as f:
        model = pickle.load(f)
    version = int(args.version)

    class Handler(BaseHTTPRequestHandler):
        def answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.answer(200, {"status": "ok", "version": version})
            else:
                self.answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/predict":
                return self.answer(404, {"error": "not found"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                predictions = model.predict(np.asarray(body["instances"], dtype=float)).tolist()
            except (ValueError, KeyError, TypeError) as err:
                return self.answer(400, {"error": str(err)})
            self.answer(200, {"predictions": predictions, "version": version})

        def log_message(self, *_args) -> None:  # one line per request is noise here
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(url + "\n")
        os.replace(tmp, args.ready_file)  # whole or absent, never half a URL
    print(f"serving {args.artifact} (version {version}) at {url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
