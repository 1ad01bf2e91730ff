"""Exceptions for errors a user can fix (bad input, bad config, unknown names).

The command line prints these as one line, ``ddmr: error: ...``, and exits non-zero
without a traceback (``--debug`` shows it). Anything else is a bug and keeps its traceback.
"""


class DdmrError(Exception):
    """Base class of user-facing errors."""

    exit_code = 2


class ConfigError(DdmrError):
    """A gin file or binding that cannot be parsed or names something unknown."""


class PluginError(DdmrError):
    """A plugin that fails to import, or two plugins giving the same name."""


class UnknownNameError(ConfigError, KeyError):
    """A plugin name that no registered plugin provides."""

    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""


class DataError(DdmrError):
    """Unreadable, corrupt or mismatched input data (NIfTI files, arrays, shapes)."""


class CheckpointError(DdmrError):
    """A checkpoint that is missing, corrupt or of another architecture."""


class DdmrWarning(UserWarning):
    """Base class of warnings a user should see; the command line prints each as one
    line, ``ddmr: warning: ...``."""


class ModelInputWarning(DdmrWarning):
    """An input that does not look like what the model expects (its card's modality and
    intensity units, :func:`ddmr_core.model.card.input_mismatch`)."""


class RegistrationQualityWarning(DdmrWarning):
    """A registration result that looks wrong (``ddmr_core.registration.trust.assess``): shown as one
    ``ddmr: warning:`` line and recorded in results.json, never reported as a plain success."""
