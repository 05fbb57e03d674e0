"""Logging set-up from the `logging` section, shared by the CLI and the supervisor's reload."""

from __future__ import annotations

import logging
import logging.config

from rctmon.config import Config

#: Loggers left at their level by --debug: they would drown the useful lines in noise.
QUIET_LOGGERS = ("urllib3", "rctclient.frame", "asyncio")


def setup_logging(config: Config, debug: bool = False, frame_debug: bool = False) -> None:
    """Configure logging from the `logging` section; --debug turns (almost) every logger to DEBUG.

    Loggers that exist already (every module's, created at import) stay enabled: dictConfig would otherwise
    silence them unless the section says so itself.
    """
    logging.config.dictConfig({"disable_existing_loggers": False, **config.logging})
    if debug:
        logging.getLogger().setLevel(logging.DEBUG)
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.DEBUG)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    frames = logging.getLogger("rctmon.frames")
    frames.setLevel(logging.DEBUG if frame_debug else logging.INFO)
    if frame_debug:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.DEBUG)
