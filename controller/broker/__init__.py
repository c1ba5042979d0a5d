"""The message broker: an inbox per agent with long-poll ``recv``.

Every message (plain messages, typed events for the manager, threaded questions and
answers, reminders and wakes) and the operator questions the manager asks live in one
store: a sqlite file (``<state>/broker.sqlite``, WAL; the embedded default) or a PostgreSQL
database (``broker: postgresql://…`` in the controller config) that several controller
processes may share. The agent, manager and admin sockets (``controller.api``), the
dashboard and the swarm call ``Broker``; nothing else touches the store.

Delivery model
--------------
* ``send`` commits the row, then wakes whatever ``recv`` is parked for that recipient.
  Per recipient, messages are delivered in id order, which is send order.
* ``recv(lease_seconds=None)`` delivers at most once; ``recv(lease_seconds=L)`` leases, and
  redelivers unless acked within ``L`` seconds (at least once). ``release`` ends a lease.
* Poison messages: a lease that runs out after ``max_deliveries`` (5) deliveries makes the
  message a dead letter (never delivered again, announced to the manager, kept 30 days).
* Idempotency: ``send`` / ``ask`` / ``remind`` take an optional ``idempotency_key``, unique
  per caller; a repeat of the same request returns the original message, the same key for
  another request is a ``Conflict``.
* Reminders are messages with a future due time; operator questions may carry a ttl.
* Every method that changes state commits before it returns, so an HTTP 200 for ``send``
  always follows the commit.

Where each part lives
---------------------
``broker`` (the ``Broker`` class and the choice of store), ``sending``, ``receiving``,
``deadletters``, ``reading``, ``threads``, ``questions``, ``retention`` (the semantics, one
module each, over ``core``); ``store`` (the store interface) and its implementations:
``sqlite`` (connection, errors) / ``sqlite_tx`` (the SQL) / ``sqlite_schema``, and
``postgres`` (pool, errors, ``LISTEN``) / ``postgres_tx`` (the SQL, its locks) /
``postgres_schema`` (versioned migrations);
``wakeups`` (parking and waking receivers); ``model``, ``checks``, ``events``, ``limits``,
``errors`` (values, argument checks, event text, limits, errors).
"""

from __future__ import annotations

from controller.broker.broker import Broker, is_postgres_url
from controller.broker.errors import BrokerClosed, BrokerDiskFull, BrokerStorageError
from controller.broker.events import summarize_event
from controller.broker.limits import (
    CANCELLED,
    EVENT_SENDER,
    EXPIRED,
    MAX_DELIVERIES,
    MAX_IDEMPOTENCY_KEY,
    MAX_LEASE_SECONDS,
    MAX_REMIND_SECONDS,
    MAX_WAIT_SECONDS,
    RETENTION_SECONDS,
)
from controller.broker.model import OperatorQuestion
from controller.broker.sqlite import WAL_SIZE_LIMIT
from controller.broker.sqlite_schema import SCHEMA_VERSION

__all__ = [
    "CANCELLED",
    "EVENT_SENDER",
    "EXPIRED",
    "MAX_DELIVERIES",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_LEASE_SECONDS",
    "MAX_REMIND_SECONDS",
    "MAX_WAIT_SECONDS",
    "RETENTION_SECONDS",
    "SCHEMA_VERSION",
    "WAL_SIZE_LIMIT",
    "Broker",
    "BrokerClosed",
    "BrokerDiskFull",
    "BrokerStorageError",
    "OperatorQuestion",
    "is_postgres_url",
    "summarize_event",
]
