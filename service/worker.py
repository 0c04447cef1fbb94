"""The service's RQ worker: ``python -m fedcompute.service.worker`` (uses FEDCOMPUTE_REDIS_URL)."""

from __future__ import annotations

import logging

from rq import Queue, Worker

from .settings import Settings
from .store.connection import connect

QUEUE = "fedcompute"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    connection = connect(settings.redis_url)
    Worker([Queue(QUEUE, connection=connection)], connection=connection).work(
        with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main()
