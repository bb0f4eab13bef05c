"""The project's exception types: one per kind of failure, each carrying a sentence a user can act on.

The CLI turns any of these into that sentence and a non-zero exit code; anything else is a bug and
keeps its traceback.
"""


class BayesMergerError(Exception):
    """Base of every expected, user-facing failure."""

    exit_code = 1


class ConfigError(BayesMergerError):
    """The configuration, a payload file or a command-line value is wrong."""

    exit_code = 2


class CheckpointError(BayesMergerError):
    """A checkpoint cannot be read, is not a checkpoint, or does not fit the merge."""

    exit_code = 3


class MergeError(BayesMergerError):
    """A merge method, its weights or its inputs do not fit together."""

    exit_code = 3


class BrokenMerge(MergeError):
    """The merge of these weights is no usable model: it has NaN or infinite values, or values its file's
    precision cannot hold. A property of the weights, which the optimiser learns to avoid."""


class CrashesTheWebUI(BrokenMerge):
    """A WebUI was lost with this trial in flight too many times (``executor.LOSSES_BEFORE_FAILING``), over
    every session and WebUI of the run: its merge is taken to be what brings the WebUI down. Failed, not
    tried again, so that the run (and the overnight runner's restarts) can go past it."""


class WebUIError(BayesMergerError):
    """The WebUI could not be reached or answered with an error."""

    exit_code = 4

    def __init__(self, message: str, status: int | None = None, server_error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        # the exception the server named in its error body ("NansException": the model rendered NaN)
        self.server_error = server_error


class WebUIConnectionError(WebUIError):
    """The WebUI could not be reached, dropped the connection or did not answer in time.

    Not the trial's fault: the run waits for the WebUI or stops, resumable. Every other WebUIError
    (a merge that did not load, images from the wrong model) is the failure of that trial.
    """


class WebUITimedOut(WebUIConnectionError):
    """The WebUI gave no answer within ``webui.read_timeout``: slow or hung, whatever the trial's weights, so
    a loss of this kind is never counted against the trial (``executor.LOSSES_BEFORE_FAILING``)."""


class StorageError(BayesMergerError):
    """A file could not be written where it must go (disk full, no permission, read-only): not the
    trial's fault, so the run stops at once, resumable, instead of failing trial after trial."""

    exit_code = 6


class LocalOutOfMemory(BayesMergerError):
    """This process's merge or scorer ran out of GPU memory, which the WebUI shares (a renderer that runs out is
    ``renderers.comfyui.prompts.OutOfMemory``, its trial redone): not the trial's fault (the next would run out
    too), so the run stops at once, resumable, saying which setting to change."""

    exit_code = 6


class ScorerError(BayesMergerError):
    """The scorer's weights are missing or wrong, or a score is not a finite number."""

    exit_code = 5


class RatingsEnded(ScorerError):
    """Manual scoring has no more input (end of input: Ctrl-D, or a run started with its input
    redirected): not the trial's fault, so the run stops, resumable, and the trial is redone on resume."""

    exit_code = 6


class RunStopped(BayesMergerError):
    """The run stopped before its budget was spent; the run folder can be resumed."""

    exit_code = 6


class WebUIsLost(RunStopped):
    """The run stopped because no WebUI answered its trials any more; the run folder can be resumed."""


class Interrupted(RunStopped):
    """The user (Ctrl-C) or the system (SIGTERM) asked the run to stop; it stopped between trials."""

    exit_code = 130  # 128 + SIGINT: what a shell reports for a command a Ctrl-C stopped


#: Errors that say nothing about the trial they interrupted (a lost WebUI, a full disk, no ratings left, no GPU memory):
#: the trial is not logged as failed; the run waits for the WebUI, or stops resumably and redoes it.
NOT_THE_TRIALS_FAULT = (WebUIConnectionError, StorageError, RatingsEnded, LocalOutOfMemory)
