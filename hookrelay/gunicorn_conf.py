"""The recommended gunicorn settings: `gunicorn relay:app` reads them through ./gunicorn.conf.py,
and `relay serve` passes them explicitly.

Threads, not processes, carry concurrency: ingest waits on a shared commit (group commit), so many
requests in one process share each fsync. PORT and WEB_CONCURRENCY follow Heroku's conventions.
"""

import os
import shutil
import tempfile

from prometheus_client import multiprocess

bind = (
    f"{os.environ.get('HOST', '0.0.0.0' if 'PORT' in os.environ else '127.0.0.1')}:"
    f"{os.environ.get('PORT', '8000')}"
)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 60
graceful_timeout = 20
keepalive = 5
control_socket_disable = True  # one shared path would clash between relays on one machine

# Counters from every gunicorn worker are merged for /metrics.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hookrelay-metrics-")


def child_exit(server: object, worker: object) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]


def on_exit(server: object) -> None:
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
