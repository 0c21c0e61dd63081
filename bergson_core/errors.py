"""Typed errors. A `UserError` is a mistake the user can fix: the CLI prints its one-line message
and exits non-zero, without a traceback. Anything else is a bug or a transient fault."""


class UserError(Exception):
    """A problem with the user's input or configuration; the message says how to fix it."""


class ConfigError(UserError):
    """An option value that cannot work."""


class InputError(UserError):
    """A model, dataset or query file that cannot be read as asked."""


class StoreError(UserError):
    """An index that is missing, incomplete, corrupt or built with a different spec."""


class TransientError(Exception):
    """A fault worth retrying (network, object store, preemption)."""


class StoreUnavailable(UserError):
    """An object store that stayed unreachable (or failing) for the whole retry budget."""
