"""Typed errors with one clear message each; the CLI maps each class to a documented exit code."""

from __future__ import annotations


class DnsError(Exception):
    """Base class: a problem the user can act on. The message says what is wrong and what to do."""

    exit_code = 1


class OptionError(DnsError):
    """An option names something that does not exist or has a value out of range (like a usage error)."""

    exit_code = 2


class ModelError(DnsError):
    """The model file cannot be read, is invalid, or uses something the tool does not support."""

    exit_code = 3


class DataError(DnsError):
    """The training or validation data cannot be read or does not match the model's inputs."""

    exit_code = 4


class TrainingError(DnsError):
    """Training failed (for example the loss kept diverging after repeated rollbacks)."""

    exit_code = 5


class AccuracyBoundError(DnsError):
    """The compressed model misses the accuracy bound; the model was still written beside the output."""

    exit_code = 6


class OutputError(DnsError):
    """The output cannot be written (missing or read-only directory, same path as the input, disk full)."""

    exit_code = 7


class Interrupted(DnsError, KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); a checkpoint was written to resume from."""

    exit_code = 130
