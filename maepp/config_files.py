"""Experiment configs on the command line: a file path, as ml_collections takes it
(`--config configs/audiomaepp.py:base`), or a config installed with the package by name
(`--config audiomaepp:base`, from the repository's configs/, shipped as maepp.configs)."""
import importlib.resources
import os
import re
import sys

from absl import app

CONFIG_FLAGS = ("config", "model_config")


def installed(name: str) -> str:
    """'audiomaepp:base' -> the installed file's path with ':base'; anything else unchanged."""
    module, sep, argument = name.partition(":")
    if os.path.exists(module) or not module.isidentifier():
        return name
    path = importlib.resources.files("maepp.configs") / f"{module}.py"
    return f"{path}{sep}{argument}" if path.is_file() else name


def resolve_argv(argv: list) -> list:
    """argv with every --config / --model_config value that names an installed config made its path."""
    resolved, take_next = [], None
    for arg in argv:
        if take_next:
            resolved.append(installed(arg))
            take_next = None
            continue
        flag, sep, value = arg.partition("=")
        if flag.lstrip("-") in CONFIG_FLAGS and flag.startswith("-"):
            if sep:
                arg = f"{flag}={installed(value)}"
            else:
                take_next = flag
        resolved.append(arg)
    return resolved


def _unknown_field(error: Exception, argv: list):
    """The --config.* override that names a field the config lacks, if that is what `error` is."""
    missing = re.findall(r"'([A-Za-z_]\w*)'", str(error))
    for arg in argv:
        flag = arg.split("=")[0].lstrip("-")
        if flag.split(".")[0] in CONFIG_FLAGS and "." in flag and missing and missing[-1] in flag.split(".")[1:]:
            return flag
    return None


def run_cli(main, program: str):
    """app.run(main) with installed config names resolved, and a misspelt override
    (--config.model.widht=3) reported in one line instead of ml_collections' tracebacks."""
    argv = resolve_argv(sys.argv)
    try:
        app.run(main, argv=argv)
    except (AttributeError, KeyError) as error:
        flag = _unknown_field(error, argv)
        if flag is None:
            raise
        sys.exit(f"{program}: --{flag}: the config has no field {flag.split('.', 1)[1]!r}; check its spelling "
                 f"(python -m maepp.tools.summary --config ... prints a config's fields)")
