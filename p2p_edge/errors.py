"""User-facing errors: each carries one line that names what was wrong and where."""


class P2PError(Exception):
    """An error the CLI prints as one line (no traceback unless --debug) and exits non-zero."""

    exit_code = 2


class InputError(P2PError):
    """Bad user input: a history file, a summary file, a config."""

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.detail = str(path), line, field, message
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class ModelFileError(P2PError):
    """A model-side file (base GGUF, adapter GGUF, hypernet ONNX or card) is missing, corrupt or mismatched."""


class TrainingDiverged(P2PError):
    """Training made the base model worse than no adapter at all (a loss blow-up): stop rather than ship it."""
