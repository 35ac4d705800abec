"""The exceptions digest raises on purpose.

    DigestError                  anything the operator or reader should be told in one line
    ├── ConfigError              a config key has a bad value (names the key, the value, what was expected)
    ├── UsageError               a CLI argument names something that does not exist or is malformed
    ├── SchemaError              the database schema is missing or older than this code
    ├── SourceError              one source could not be fetched or parsed (names the source)
    ├── TemplateError            a template is missing or broken (names the file and line)
    ├── PortInUse                a port to listen on is taken (names the port and the key that moves it)
    └── AddressError             an email address is malformed (names the address)

User mistakes (ConfigError, UsageError, AddressError) exit 2 from the CLI; the rest exit 1.
"""

from __future__ import annotations


class DigestError(Exception):
    """Something went wrong that can be said in one line."""

    exit_code = 1


class ConfigError(DigestError):
    """The configuration is invalid."""

    exit_code = 2


class UsageError(DigestError):
    """The command was given something it cannot use."""

    exit_code = 2


class AddressError(UsageError):
    """An email address is malformed."""


class SchemaError(DigestError):
    """The database schema is missing or outdated; run `digest migrate`."""


class SourceError(DigestError):
    """A source could not be fetched or parsed."""


class TemplateError(DigestError):
    """A template is missing or broken."""


class PortInUse(DigestError):
    """A port this process must listen on is already taken."""
