"""The exceptions medssl raises for bad input; the CLI prints them in one line."""


class MedsslError(Exception):
    """Base class: a problem with user input that the user can fix."""


class RecipeError(MedsslError):
    """A recipe key is unknown, mistyped or out of range."""


class CohortError(MedsslError):
    """A cohort folder, participants table or volume is missing or malformed."""


class CheckpointError(MedsslError):
    """A checkpoint or encoder file cannot be used as asked."""


class TrainingError(MedsslError):
    """Training cannot go on (non-finite loss or gradients, unsupported set-up)."""


class OutputError(MedsslError):
    """A file cannot be written: no space left, a read-only folder, no permission."""


class BenchmarkError(MedsslError):
    """A benchmark request does not fit its folder or cannot run as asked."""
