"""The baseline for bench/ingest.py: a Flask endpoint that reads the body and answers 202.

No config, no auth, no parsing, no storage: what is left is the cost of gunicorn + Flask + HTTP,
the floor that the durable relay is compared with. Run by bench/ingest.py as
`python -m gunicorn -c python:hookrelay.gunicorn_conf --chdir bench bare:app`.
"""

from __future__ import annotations

from flask import Flask, request
from flask.typing import ResponseReturnValue

app = Flask(__name__)


@app.post("/hooks/qualifio")
def receive() -> ResponseReturnValue:
    request.get_data()
    return {"ok": True}, 202
