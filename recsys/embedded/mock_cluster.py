"""librdkafka's mock cluster, owned directly through the librdkafka that confluent-kafka ships.

The mock cluster speaks the Kafka wire protocol on 127.0.0.1 (normal clients connect over
TCP) but keeps every message in memory only. Its API (``rd_kafka_mock_*``) is part of
librdkafka's public C API; confluent-kafka does not wrap it, so it is called via ctypes.
The mock does not implement the CreateTopics admin API, so topics are created here.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from pathlib import Path

import confluent_kafka

RD_KAFKA_PRODUCER = 0
ERR_TOPIC_ALREADY_EXISTS = 36


class MockClusterError(RuntimeError):
    pass


def _load_librdkafka() -> ctypes.CDLL:
    pkg = Path(confluent_kafka.__file__).resolve().parent
    candidates = sorted(glob.glob(str(pkg.parent / "confluent_kafka.libs" / "librdkafka*.so*")))
    candidates += sorted(glob.glob(str(pkg / ".dylibs" / "librdkafka*.dylib")))
    if not candidates:
        raise MockClusterError(
            "librdkafka from the confluent-kafka wheel not found; the embedded broker needs the "
            "binary wheel of confluent-kafka (pip install confluent-kafka)"
        )
    lib = ctypes.CDLL(candidates[0])
    vp, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, c_char_p, c_char_p, c_char_p, ctypes.c_size_t]
    lib.rd_kafka_conf_set.restype = c_int
    lib.rd_kafka_new.argtypes = [c_int, vp, c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_destroy.argtypes = [vp]
    lib.rd_kafka_mock_cluster_new.argtypes = [vp, c_int]
    lib.rd_kafka_mock_cluster_new.restype = vp
    lib.rd_kafka_mock_cluster_destroy.argtypes = [vp]
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [vp]
    lib.rd_kafka_mock_cluster_bootstraps.restype = c_char_p
    lib.rd_kafka_mock_set_controller_id.argtypes = [vp, ctypes.c_int32]
    lib.rd_kafka_mock_set_controller_id.restype = c_int
    lib.rd_kafka_mock_topic_create.argtypes = [vp, c_char_p, c_int, c_int]
    lib.rd_kafka_mock_topic_create.restype = c_int
    lib.rd_kafka_err2str.argtypes = [c_int]
    lib.rd_kafka_err2str.restype = c_char_p
    return lib


class MockCluster:
    """A running mock Kafka cluster. ``bootstrap`` is what clients put in bootstrap.servers."""

    def __init__(self, num_brokers: int = 1) -> None:
        if num_brokers < 1:
            raise MockClusterError("num_brokers must be >= 1")
        self._lib = _load_librdkafka()
        self._lock = threading.Lock()
        conf = self._lib.rd_kafka_conf_new()
        err = ctypes.create_string_buffer(512)
        # The owning handle never connects anywhere; silence its "no bootstrap" warning.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", err, len(err))
        self._rk = self._lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, len(err))
        if not self._rk:
            raise MockClusterError(f"rd_kafka_new failed: {err.value.decode()}")
        self._mc = self._lib.rd_kafka_mock_cluster_new(self._rk, num_brokers)
        if not self._mc:
            self._lib.rd_kafka_destroy(self._rk)
            raise MockClusterError("rd_kafka_mock_cluster_new failed")
        # Clients look for a controller; the mock reports none unless told.
        self._lib.rd_kafka_mock_set_controller_id(self._mc, 1)
        self.num_brokers = num_brokers
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()
        self.topics: dict[str, int] = {}
        self.pid = os.getpid()

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> bool:
        """Create a topic; returns False if it already existed. Raises on other errors."""
        if not name or partitions < 1:
            raise MockClusterError(f"invalid topic {name!r} with {partitions} partitions")
        with self._lock:
            if name in self.topics:
                return False
            rc = self._lib.rd_kafka_mock_topic_create(
                self._mc, name.encode(), partitions, min(replication, self.num_brokers)
            )
            if rc == ERR_TOPIC_ALREADY_EXISTS:
                return False
            if rc != 0:
                raise MockClusterError(
                    f"creating topic {name!r}: {self._lib.rd_kafka_err2str(rc).decode()}"
                )
            self.topics[name] = partitions
            return True

    def close(self) -> None:
        with self._lock:
            if self._mc:
                self._lib.rd_kafka_mock_cluster_destroy(self._mc)
                self._mc = None
            if self._rk:
                self._lib.rd_kafka_destroy(self._rk)
                self._rk = None
