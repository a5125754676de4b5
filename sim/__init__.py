"""Closed-loop clickstream simulator, load generator and dataset replay."""
