"""User-facing errors.

Anything a user can cause (a wrong path, a file that does not match its mask, a code of the wrong
shape) raises :class:`PrivacySFError` with a message naming the culprit and the fix. The CLI prints
the message and exits non-zero without a traceback; programming errors still raise normally.
"""


class PrivacySFError(Exception):
    """An error caused by input the user can fix; its message says what was wrong and what to do."""


class DataError(PrivacySFError):
    """A dataset, file or mask that cannot be used as given."""


class ConfigError(PrivacySFError):
    """A configuration value or checkpoint that does not fit the run."""


class WireFormatError(PrivacySFError):
    """A code payload that does not follow the exchange format (shape, dtype or version)."""


class AuthError(PrivacySFError):
    """A missing, unknown or revoked API token."""


class NotFoundError(PrivacySFError):
    """An id that does not exist, or that belongs to another center (the two look the same)."""


class PayloadTooLargeError(PrivacySFError):
    """An upload or request body above the service's size limit."""


class ServiceError(PrivacySFError):
    """The service refused a request; the message is the server's explanation."""


class FederationError(PrivacySFError):
    """A multi-center run cannot go on: too few centers left, or a dropout with ``on_dropout=fail``."""


class QuotaError(PrivacySFError):
    """A request over a per-center limit of the service (too many queued jobs)."""


class ConflictError(PrivacySFError):
    """A request that does not fit the current state of what it names (cancel of a finished job)."""


class DataWarning(UserWarning):
    """A dataset the run can use, but whose scores mean less than they seem (e.g. a split without a class)."""
