"""One attempt at a claimed batch: each delivery mapped to its record, the records sent, and
whatever happened turned into each delivery's outcome (hookrelay.retries decides which)."""

from __future__ import annotations

import json
import time

from hookrelay.claims import Delivery, Outcome
from hookrelay.config import Config, Policy
from hookrelay.destinations import Destination, Record
from hookrelay.errors import DeliveryError, Permanent, Refused, Skip
from hookrelay.retries import backoff, internal_error, outcome
from hookrelay.sources import normalise


def map_batch(
    config: Config, destination: Destination | None, batch: list[Delivery]
) -> tuple[list[Outcome], list[tuple[Delivery, Record]]]:
    """Each delivery's record, or its outcome already when it has none (skipped, dead)."""
    outcomes, records = [], []
    for d in batch:
        now = time.time()
        try:
            records.append((d, record_of(config, destination, d)))
        except Skip as exc:
            outcomes.append(Outcome(d, "skipped", now, 0, exc.message, is_attempt=False))
        except Permanent as exc:
            outcomes.append(Outcome(d, "dead", now, 0, exc.message))
        except Exception as exc:  # whatever one payload provokes ends that delivery alone
            outcomes.append(Outcome(d, "dead", now, 0, internal_error(exc, d)))
    return outcomes, records


def record_of(config: Config, destination: Destination | None, d: Delivery) -> Record:
    """The record the delivery's mapping makes of its payload now.

    :raise Skip: the mapping's `when`, or a field the destination requires, rules it out.
    :raise Permanent: its destination or mapping left the config, or an expression failed.
    """
    if destination is None:
        raise Permanent(
            f"destination {d.destination!r} is no longer in the config; restore it, then replay"
        )
    mapping = config.mappings.get(d.mapping)
    if mapping is None:
        raise Permanent(f"mappings/{d.mapping}.yaml is no longer there; restore it, then replay")
    fields = mapping.apply(normalise(d.format, json.loads(d.payload)))
    missing = [f for f in destination.required if fields.get(f) in (None, "")]
    if missing:
        raise Skip(f"no {', '.join(missing)} in the record; {destination.type} needs it")
    return Record(d.id, d.event_id, fields)


def send(
    destination: Destination, policy: Policy, records: list[tuple[Delivery, Record]]
) -> list[Outcome]:
    """Send one batch; each delivery of it gets an outcome, whatever the destination raised.

    A batch refused for what a record holds (Refused) is split in halves, and each sent on
    its own, until the record at fault stands alone: its neighbours are delivered.
    """
    started = time.time()
    try:
        destination.send([r for _, r in records])
    except Refused as exc:
        if len(records) > 1:
            half = len(records) // 2
            return send(destination, policy, records[:half]) + send(
                destination, policy, records[half:]
            )
        error: DeliveryError | None = exc
    except DeliveryError as exc:
        error = exc
    except Exception as exc:  # a bug in a destination ends the batch, never the thread
        took = int((time.time() - started) * 1000)
        return [Outcome(d, "dead", started, took, internal_error(exc, d)) for d, _ in records]
    else:
        error = None
    took = int((time.time() - started) * 1000)
    # A batch that failed together retries together, so it is sent as one batch again.
    attempt = max(d.attempts for d, _ in records) + 1
    delay = backoff(policy, attempt, getattr(error, "delay", None))
    return [outcome(d, policy, error, started, took, delay) for d, _ in records]
