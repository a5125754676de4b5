"""App shell: the `recsys` CLI, the settings object and the embedded stack."""

__version__ = "0.1.0"
