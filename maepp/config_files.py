"""Experiment configs on the command line: a file path, as ml_collections takes it
(`--config configs/audiomaepp.py:base`), or a config installed with the package by name
(`--config audiomaepp:base`, from the repository's configs/, shipped as maepp.configs)."""
import importlib.resources
import os

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
