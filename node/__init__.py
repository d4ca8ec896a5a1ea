"""The telemetry ingestor node."""

__version__ = "0.1.0"
