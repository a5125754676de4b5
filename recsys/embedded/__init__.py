"""The embedded default stack: a Kafka-protocol broker and a real redis-server, on localhost."""
