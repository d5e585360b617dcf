"""The project's one error type for bad input: a config field, a flag, a path or a file that a
run cannot use. `main.py` prints it as one line (what is wrong, what is allowed) and exits 2;
any other exception is a fault and keeps its traceback."""


class ConfigError(ValueError):
    """Bad input from the user, said in one line before anything expensive runs."""
