"""Credentials in storage options: redacted wherever a config is written down, and resolvable by
name ("prefect-secret:NAME") so that nothing secret has to be passed as a parameter at all.

bergson_core has no Prefect import: the flows register the resolver of secret names at import."""

from __future__ import annotations

from typing import Any, Callable

SECRET_KEYS = {"key", "secret", "token", "password", "passwd", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "session_token", "client_secret", "account_key", "sas_token",
               "connection_string", "credentials", "access_key", "secret_key", "api_key"}
REDACTED = "**redacted**"
SECRET_PREFIX = "prefect-secret:"

_resolver: Callable[[str], str] | None = None
_resolved: dict[str, str] = {}


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SECRET_PREFIX)


def redact(options: Any) -> Any:
    """A copy with every secret-looking value replaced (references to secrets by name are kept)."""
    if isinstance(options, dict):
        return {k: (REDACTED if str(k).lower() in SECRET_KEYS and value_is_secret(v) else redact(v))
                for k, v in options.items()}
    if isinstance(options, list):
        return [redact(v) for v in options]
    return options


def value_is_secret(value: Any) -> bool:
    return value is not None and not is_reference(value) and not isinstance(value, (bool, dict, list))


def register_resolver(fn: Callable[[str], str]) -> None:
    """fn(name) -> the secret's value (the flows register Prefect's Secret.load)."""
    global _resolver
    _resolver = fn


def resolve(options: Any) -> Any:
    """A copy with every "prefect-secret:NAME" value replaced by the secret it names."""
    if isinstance(options, dict):
        return {k: resolve(v) for k, v in options.items()}
    if isinstance(options, list):
        return [resolve(v) for v in options]
    if options == REDACTED:
        from .errors import ConfigError

        raise ConfigError("a storage option was redacted when this run was created (credentials are never stored "
                          "as parameters): name a Prefect Secret block (\"prefect-secret:NAME\"), or use the "
                          "environment or an AWS profile")
    if is_reference(options):
        from .errors import ConfigError

        name = options[len(SECRET_PREFIX):]
        if _resolver is None:
            raise ConfigError(f"storage option {options!r} names a Prefect Secret block, but no resolver is "
                              "registered (run it through a bergson flow or CLI)")
        try:
            if name not in _resolved:  # one API call per secret and process, not one per file opened
                _resolved[name] = _resolver(name)
            return _resolved[name]
        except ValueError as e:
            raise ConfigError(f"Prefect Secret block {name!r} cannot be loaded: {e}") from None
    return options
