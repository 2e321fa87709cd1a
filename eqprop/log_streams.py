"""Which stream a run's log line goes to (conf/config.yaml, hydra.job_logging): INFO and below on
stdout, warnings and errors on stderr, where the refusals and the crash messages have always been."""
import logging


class BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING
