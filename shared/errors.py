"""The project's own error hierarchy: temporary errors are retried, permanent ones are recorded and dead-lettered."""


class TvtbError(Exception):
    """Base of every error the project raises on purpose."""


class TemporaryError(TvtbError):
    """Worth retrying with backoff (network, rate limit, a busy venue), within the signal's max lag."""


class PermanentError(TvtbError):
    """Retrying cannot help: record it, report it, dead-letter the message."""


class ConfigurationError(PermanentError):
    """A setting is missing or malformed."""
