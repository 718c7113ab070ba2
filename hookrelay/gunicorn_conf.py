"""The recommended gunicorn settings: `gunicorn relay:app` reads them through ./gunicorn.conf.py,
and `relay serve` passes them explicitly.

Threads, not processes, carry concurrency: ingest waits on a shared commit (group commit), so many
requests in one process share each fsync. PORT and WEB_CONCURRENCY follow Heroku's conventions.
"""

import os
import sys
from typing import Any

from hookrelay.config import default_config_path, load_config
from hookrelay.errors import RelayError
from hookrelay.preflight import refuse_failing_tests
from hookrelay.runtime import check_example_secret
from hookrelay.serving import DeliveryProcess

# HOST, else every interface when the platform gives the port (Heroku's PORT), else loopback.
# `relay serve` always sets HOST: loopback unless told otherwise. Beyond loopback, on_starting
# refuses the example secret.
_default_host = "0.0.0.0" if "PORT" in os.environ else "127.0.0.1"
bind = f"{os.environ.get('HOST') or _default_host}:{os.environ.get('PORT', '8000')}"
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


def on_starting(server: Any) -> None:
    """Before listening: a broken config (a mapping whose tests fail too), or the example secret
    beyond loopback, is refused in one line (exit 1), not in every worker that would fail to
    boot."""
    try:
        config = load_config(default_config_path())
        refuse_failing_tests(config)
        warnings = check_example_secret(config, map(host_of, server.cfg.bind))
    except RelayError as exc:
        for line in str(exc).splitlines():
            server.log.error("%s", line)
        sys.exit(1)
    for warning in warnings:
        server.log.warning("%s", warning)


def host_of(address: str) -> str:
    """The host of a gunicorn bind address: 0.0.0.0:8000, [::1]:8000, localhost, unix:/path."""
    if address.startswith(("unix:", "fd://")):
        return address
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address.rpartition(":")[0] if address.count(":") == 1 else address


def when_ready(server: object) -> None:
    if os.environ.get("RELAY_WORKER", "on") != "off":
        DELIVERY.start(server.log)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    DELIVERY.stop()
