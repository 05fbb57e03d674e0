"""Exporter processes: each consumes messages from the supervisor and hands readings on."""
