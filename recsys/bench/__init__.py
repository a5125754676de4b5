"""Every benchmark and evaluation driver (``recsys bench KIND``), the echo baseline included."""
