"""Run the embedded Kafka-protocol broker (in-memory librdkafka mock cluster) and create topics."""

from __future__ import annotations

import argparse

from core.settings import Settings
from recsys.embedded.broker import run_broker

HELP = "embedded Kafka-protocol broker on localhost (in-memory)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brokers", type=int, default=1, help="mock brokers in the cluster")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return run_broker(settings, num_brokers=args.brokers)
