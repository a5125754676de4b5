"""Bytewax dataflows: clickstream -> live state in Redis (sessions, features, co-visitation)."""
