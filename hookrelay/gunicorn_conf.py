"""The recommended gunicorn settings: `gunicorn relay:app` reads them through ./gunicorn.conf.py,
and `relay serve` passes them explicitly.

Threads, not processes, carry concurrency: ingest waits on a shared commit (group commit), so many
requests in one process share each fsync. PORT and WEB_CONCURRENCY follow Heroku's conventions.
"""

import os

from hookrelay.serving import DeliveryProcess

bind = (
    f"{os.environ.get('HOST', '0.0.0.0' if 'PORT' in os.environ else '127.0.0.1')}:"
    f"{os.environ.get('PORT', '8000')}"
)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, where a request must arrive within RELAY_REQUEST_TIMEOUT seconds (default 10), so
# clients that trickle their requests cannot hold every thread.
worker_class = "hookrelay.serving.DeadlineThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 60
graceful_timeout = 20
keepalive = 5
control_socket_disable = True  # one shared path would clash between relays on one machine

# The delivery worker runs beside the web workers, in a process of its own (RELAY_WORKER=off when
# separate `relay worker` processes deliver).
DELIVERY = DeliveryProcess()


def when_ready(server: object) -> None:
    if os.environ.get("RELAY_WORKER", "on") != "off":
        DELIVERY.start(server.log)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    DELIVERY.stop()
