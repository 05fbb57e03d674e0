"""rctmon: a monitoring daemon for RCT Power inverters."""

__version__ = "0.1.0"
