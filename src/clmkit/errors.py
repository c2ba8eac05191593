"""User-facing errors: each names the cause and the fix, and the CLI turns them into exit code 2."""

from __future__ import annotations


class ClmkitError(Exception):
    """Base of every error clmkit raises for bad input; its message names the cause and the fix."""


class PluginError(ClmkitError):
    """A plugin could not be loaded, validated or registered."""


class UnknownNameError(ClmkitError, KeyError):
    """A registry was asked for a name no plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConfigError(ClmkitError, ValueError):
    """Arguments, a config file or keyword arguments of a plugin are wrong."""


class DataError(ClmkitError, ValueError):
    """A dataset, tokenizer or model does not fit the run."""
