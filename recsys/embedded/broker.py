"""`recsys broker`: the embedded Kafka-protocol broker (librdkafka mock cluster) as a service.

It creates the configured topics, serves a tiny control API (create topics, since the mock
has no CreateTopics support) and publishes ``state_dir/broker.json`` so every other
command finds it. Data lives in memory only: stopping the broker loses every message.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core.settings import BROKER_FILE, Settings
from core.signals import stop_on_signals
from recsys.embedded.mock_cluster import MockCluster, MockClusterError

BANNER = (
    "embedded Kafka-protocol broker (librdkafka mock cluster) on {bootstrap}: "
    "data is held IN MEMORY ONLY and is lost when it stops; use Apache Kafka "
    "(docker-compose.yml) for durable data"
)


def _handler(cluster: MockCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:  # quiet
            return

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/topics":
                self._reply(200, {"topics": cluster.topics})
            elif self.path == "/health":
                self._reply(200, {"ok": True, "bootstrap": cluster.bootstrap})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/topics":
                self._reply(404, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(length) or b"{}")
                created = {}
                for t in req.get("topics", []):
                    created[t["name"]] = cluster.create_topic(t["name"], int(t["partitions"]))
            except (KeyError, ValueError, TypeError, MockClusterError) as exc:
                self._reply(400, {"error": str(exc)})
                return
            self._reply(200, {"created": created})

    return Handler


class EmbeddedBroker:
    """Mock cluster + control server + published address file."""

    def __init__(self, settings: Settings, num_brokers: int = 1) -> None:
        self.settings = settings
        self.cluster = MockCluster(num_brokers)
        for topic in settings.all_topics():
            self.cluster.create_topic(topic, settings.partitions)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.cluster))
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        self.control_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self.info_path = Path(settings.state_dir) / BROKER_FILE
        self.info_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "kind": "librdkafka-mock",
                    "bootstrap": self.cluster.bootstrap,
                    "control_url": self.control_url,
                    "pid": os.getpid(),
                    "persistent": False,
                    "started_at": time.time(),
                },
                indent=2,
            )
        )
        tmp.replace(self.info_path)

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        try:
            info = json.loads(self.info_path.read_text())
            if info.get("pid") == os.getpid():
                self.info_path.unlink()
        except (OSError, ValueError):
            pass
        self.cluster.close()


def run_broker(settings: Settings, num_brokers: int = 1) -> int:
    broker = EmbeddedBroker(settings, num_brokers)
    print(BANNER.format(bootstrap=broker.bootstrap), flush=True)
    print(
        f"topics ({settings.partitions} partitions each): {', '.join(settings.all_topics())}; "
        f"control API {broker.control_url}; address published in {broker.info_path}",
        flush=True,
    )
    stop = stop_on_signals()
    stop.wait()
    broker.close()
    print("embedded broker stopped (its in-memory data is gone)", flush=True)
    return 0
