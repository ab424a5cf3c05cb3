"""Build the Faust app of one worker role.

Each role (projections, stock, cache+search, notifications, analytics, ...) is its own consumer
group and process, so a dependency that is down pauses only the role that needs it. Every role
runs `at_least_once`; its agents make their effects idempotent.
"""

from __future__ import annotations

import importlib
import logging

import faust

from mohallamart.settings import Settings

__all__ = ["ROLES", "create_app"]

#: role -> the agent modules it runs (imported for their side effect of registering agents).
#: Later issues fill these in; a role with no agents still joins Kafka and serves its web port.
ROLES: dict[str, tuple[str, ...]] = {
    "projections": (),
}


def create_app(role: str, settings: Settings) -> faust.App:
    """The Faust app for `role`, configured from `settings`."""
    if role not in ROLES:
        raise ValueError(f"unknown worker role {role!r}; roles are: {', '.join(ROLES)}")
    datadir = settings.worker_data_dir / role
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"mohallamart-{role}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        # RocksDB through rocksdict (faust picks it when python-rocksdb is absent)
        store="rocksdb://",
        processing_guarantee="at_least_once",
        topic_replication_factor=1,
        topic_allow_declare=True,
        datadir=str(datadir),
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_ms / 1000,
        producer_acks=-1,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_enabled=True,
        autodiscover=False,
    )
    for module in ROLES[role]:
        importlib.import_module(module)
    return app


def run_worker(role: str, settings: Settings) -> None:
    """Run one worker of `role` in the foreground until SIGINT/SIGTERM."""
    app = create_app(role, settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    # faust leaves the root logger at DEBUG when started at its default level (~23% CPU at low
    # rates on this machine): put it back where the settings say.
    logging.getLogger().setLevel(settings.log_level)
    worker.execute_from_commandline()
