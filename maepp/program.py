"""What every command-line program of maepp does before and around its main: experiment configs
named by path (`--config configs/audiomaepp.py:base`) or by installed name (`--config
audiomaepp:base`, from the repository's configs/, shipped as maepp.configs); overrides checked
against the config itself; its own flags under --help; Ctrl-C and a full disk as one line."""

import difflib
import errno
import gc
import importlib.resources
import importlib.util
import logging as pylogging
import os
import sys
import traceback

from absl import app, flags, logging

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


def _config_arguments(argv: list) -> dict:
    """{config flag: (its value, [(override path, the argument)])} from a command line."""
    found, values = {}, {}
    for i, arg in enumerate(argv[1:], 1):
        flag, sep, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-"):
            continue
        name, _, path = flag.partition(".")
        if name in CONFIG_FLAGS and not path:
            values[name] = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
        elif name in CONFIG_FLAGS:
            found.setdefault(name, []).append((path, arg.split("=")[0]))
    return {name: (value, found.get(name, [])) for name, value in values.items()}


def load_config(spec: str, flag: str = "config"):
    """The ConfigDict a config argument names ('FILE.py[:ARG]'); ValueError, one line, if it cannot be had."""
    path, _, argument = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(
            f"--{flag} {spec}: there is no file {path} (an installed config is named like audiomaepp:base)"
        )
    module_spec = importlib.util.spec_from_file_location("maepp_checked_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ValueError(f"--{flag} {spec}: line {error.lineno}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001 - whatever the file's own code raises, in one line
        raise ValueError(f"--{flag} {spec}: {_where_raised(error)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(
            f"--{flag} {spec}: {path} has no get_config(): define one that returns the ConfigDict, as "
            "configs/audiomaepp.py does"
        )
    try:
        return get_config(argument) if argument else get_config()
    except ValueError as error:  # maepp's own refusals (e.g. an unknown size) say what to do already
        raise ValueError(f"--{flag} {spec}: {error}") from None
    except Exception as error:  # noqa: BLE001 - whatever the file's get_config raises, in one line
        raise ValueError(f"--{flag} {spec}: get_config raised it: {_where_raised(error)}") from None


def _where_raised(error: Exception) -> str:
    """'FILE:LINE: TYPE: MESSAGE' of the innermost frame an exception was raised in."""
    where = traceback.extract_tb(error.__traceback__)[-1]
    return f"{where.filename}:{where.lineno}: {type(error).__name__}: {error}"


def config_file_flag(name: str, default, help_string: str):
    """Every maepp program's experiment-config flag (ml_collections' config file). New attributes
    are taken, so that an evaluator entry's setting left at its default can be set from the command
    line (--config.evals.NAME.shots=4); check_overrides, run before absl parses, refuses every other
    new name."""
    from ml_collections import config_flags

    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=False, accept_new_attributes=True)


def check_overrides(config, overrides: list, flag: str = "config"):
    """Raises ValueError, one line, for an override of a field the config does not have, naming the
    nearest one. A setting an evaluator entry left at its kind's default is a field it has
    (config_file_flag takes it as a new attribute)."""
    for path, argument in overrides:
        node, walked = config, []
        for key in path.split("."):
            if not hasattr(node, "keys") or key not in node:
                # An evaluator entry's kind has settings the entry may leave at their defaults.
                defaults = _evaluator_defaults(node) if walked[:1] == ["evals"] and len(walked) == 2 else {}
                if key in defaults and path == ".".join([*walked, key]):
                    break
                known = list(node.keys()) if hasattr(node, "keys") else []
                known += [name for name in defaults if name not in known]
                near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                where = f"config.{'.'.join(walked)}" if walked else "the config"
                hint = (
                    f"; did you mean {'.'.join(walked + near)!r}?"
                    if near
                    else f"; {where} has {', '.join(known)}"
                    if known
                    else f"; {where} is a value, not a section"
                )
                meant = next((name for name in near if name in defaults), None)
                if meant:  # a setting the entry left out, misspelt
                    hint += f" ({meant!r}: a setting of {node['type']} evaluators, {defaults[meant]!r} unless set)"
                if walked == ["evals"] and not near:  # an evaluator of its own: a config file adds it
                    hint += (
                        f"; an evaluator is added in a config file, after get_config: from maepp.configs import "
                        f"audiomaepp / def get_config(size='base'): config = audiomaepp.get_config(size); "
                        f"config.evals.{key} = dict(type='probe', task='/data/task', every=5000); return config "
                        "(docs/training.md#evaluators)"
                    )
                raise ValueError(f"{argument}: no field {'.'.join([*walked, key])!r}{hint}")
            node, walked = node[key], [*walked, key]


def _evaluator_defaults(entry) -> dict:
    """The defaults of an entry of config.evals's kind, {} if it names none."""
    from maepp.evaluator_kinds import KINDS

    kind = KINDS.get(entry.get("type")) if hasattr(entry, "get") else None
    return kind.defaults if kind else {}


def _suggest_size(message: str, spec: str) -> str:
    """An unknown size's message, with the nearest size named."""
    argument = spec.partition(":")[2]
    known = (
        [name.strip(" ,.") for name in message.split("choose one of")[-1].split(",")]
        if "choose one of" in message
        else []
    )
    near = difflib.get_close_matches(argument, known, n=1, cutoff=0.5)
    return f"{message}; did you mean {near[0]!r}?" if near else message


def _show_own_flags(main):
    """--help of a console script lists the program's own flags, with its module's description:
    absl shows the flags and docstring of sys.argv[0]'s module, which here is the script wrapper."""
    module = sys.modules[main.__module__]
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules.get("__main__")
    if main_module is not None and module.__doc__ and not getattr(main_module, "__doc__", None):
        main_module.__doc__ = module.__doc__


# A write that found no room: a full disk, a quota, a file size limit (ulimit -f).
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_DISK_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")


def out_of_space(error: BaseException) -> str:
    """What the OS said, and of which file, if a write found no room anywhere in the error's chain
    (TensorFlow and TensorStore pass it on as text); "" otherwise."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS:
            return f"{error.strerror}: {error.filename}" if error.filename else str(error.strerror)
        for line in str(error).splitlines():
            if any(words in line for words in FULL_DISK_WORDS):
                return line.strip()[:300]
        error = error.__cause__ or error.__context__
    return ""


def use_compile_cache(setting: str, default: str = ""):
    """Keeps XLA's compiled programs in config.compile_cache_dir for the next start: "auto" is
    $JAX_COMPILATION_CACHE_DIR where set (empty: none), else `default`; "" is none."""
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR", default) if setting == "auto" else setting
    if folder:
        import jax

        jax.config.update("jax_compilation_cache_dir", folder)
        # Every program: a start compiles about twenty under jax's default threshold of 1 s.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


# Python's cyclic garbage collector at its default thresholds (a young collection every 700 new
# objects) runs thousands of times while JAX, TensorFlow and Orbax load and the programs are
# traced, walking millions of long-lived objects: 6-10% of a program's CPU (perf, micro runs and
# the test suite, 2-core AMD EPYC, 2026-12-05). With young collections every 50,000 objects and
# full ones at most every 10 million, a 60-step micro run took 39-42 CPU-seconds instead of 41-47.
GC_THRESHOLDS = (50_000, 20, 10)


class _OneLine(pylogging.Formatter):
    """A log record as `program: warning: message`, the way the programs print their own lines."""

    def __init__(self, program: str):
        super().__init__()
        self.program = program

    def format(self, record) -> str:
        return f"{self.program}: {record.levelname.lower()}: {record.getMessage()}"


class _LibraryErrorsSaidOnce(pylogging.Filter):
    """Orbax logs a failed save or restore as ERROR records from its threads, and Beam a failed
    step of prepare's pipeline before raising it; maepp says each such failure in its own line
    (maepp/checkpoints.py, run_cli below), so those records are left out unless --verbosity brings
    the libraries' logs back (a full disk: two lines and a blank, or Beam's line, before ours)."""

    LIBRARIES = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "apache_beam"))

    def filter(self, record) -> bool:
        return not (record.levelno >= pylogging.ERROR and any(part in record.pathname for part in self.LIBRARIES))


def _closed_loop_callback(kind, error, trace) -> bool:
    """When a write fails, Orbax's save ends its asyncio loop with TensorStore writes still
    pending, and each of those, finishing later on a TensorStore thread, calls back into the
    closed loop; the RuntimeError is printed through sys.excepthook or sys.unraisablehook (a full
    tmpfs: 276 tracebacks, 800 lines before maepp's own line about the failed save)."""
    last = traceback.extract_tb(trace)[-1:] if trace is not None else []
    return (
        kind is RuntimeError and str(error) == "Event loop is closed" and bool(last) and last[0].name == "_check_closed"
    )


def _without_closed_loop_callbacks():
    """sys.excepthook and sys.unraisablehook, each less those errors."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def print_exception(kind, error, trace):
        if not _closed_loop_callback(kind, error, trace):
            excepthook(kind, error, trace)

    def print_unraisable(unraisable):
        if not _closed_loop_callback(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = print_exception, print_unraisable


def exit_now(message: str, status: int):
    """Prints the message as the console's last line, on a line of its own, and exits at once (no
    destructors, no atexit handlers). Other threads may still be writing: Orbax's threads logged a
    failed save's traceback after a full-disk run's message once. From here on what they write goes
    nowhere."""
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    unwritten = ("\n" + message + "\n").encode()
    while unwritten:
        unwritten = unwritten[os.write(console, unwritten) :]
    os._exit(status)


def run_cli(main, program: str, argv: list | None = None):
    """app.run(main) for every maepp program: installed config names resolved; the config file,
    its size and every --config.FIELD override checked first, each mistake one line; --help with
    the program's own flags; Ctrl-C one line and exit status 130."""
    gc.set_threshold(*GC_THRESHOLDS)
    argv = resolve_argv(sys.argv if argv is None else argv)
    _show_own_flags(main)
    asks_help = any(arg in ("--help", "-h", "--helpfull", "--helpshort") for arg in argv)
    if not asks_help:
        for flag, (spec, overrides) in _config_arguments(argv).items():
            try:
                check_overrides(load_config(spec, flag), overrides, flag)
            except ValueError as error:
                sys.exit(f"{program}: {_suggest_size(str(error), spec)}")

    def parse_flags(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            sys.exit(f"{program}: {'; '.join(str(error).splitlines())} (--help lists the flags)")
        except SystemExit:
            # absl exits 1 after printing the help it was asked for; that is a success.
            if asks_help:
                sys.exit(0)
            raise

    def checked_main(argv):
        # JAX, Orbax and TensorFlow log at INFO (backends probed, every save and restore); a
        # program's own news is printed. absl's --verbosity=0 brings their logs back.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            # Warnings (a skipped clip, a file left out) as one line like the program's own.
            logging.get_absl_handler().setFormatter(_OneLine(program))
            logging.get_absl_handler().addFilter(_LibraryErrorsSaidOnce())
            _without_closed_loop_callbacks()
        try:
            return main(argv)
        except app.UsageError as error:  # absl would print the whole help above it
            sys.exit(f"{program}: {error} (--help lists the flags)")
        except Exception as error:
            full = out_of_space(error)
            if not full:
                raise
            sys.exit(
                f"{program}: out of space ({full}); what was finished is kept: free space, then run the same "
                "command again to go on from it"
            )

    try:
        app.run(checked_main, argv=argv, flags_parser=parse_flags)
    except KeyboardInterrupt:
        exit_now(f"{program}: interrupted; what was finished is kept, and the same command goes on from it", 130)
