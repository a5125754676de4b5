"""Every wire and state format: protobuf messages, Redis keys and msgpack codecs."""
