"""User mistakes as one line, and the exit codes of `main.py` and the tools.

Every command-line entry point (`main.py`, `python -m uniemox_jax.tools.prepare`, `...export`)
runs through `run_cli(main)`. A mistake of the user's — a misspelt flag, config key or config
argument, a value of the wrong type, a path that is missing or holds the wrong thing, a
starting checkpoint that does not fit the task, data that does not fit the config — ends with
one `error: ...` message on stderr that names the flag, key or path, what was found, what was
expected and what to do, and a non-zero exit code; no traceback. A traceback means a bug.

Exit codes (README "Starting points, checkpoints and resume"):

  0   finished
  1   a bug: an unexpected exception (Python's own code, with the traceback)
  2   a user error: the run cannot start as asked (flags, config, paths, starting point,
      data, a workdir without any readable checkpoint); nothing was trained
  3   stopped on a non-finite loss, gradient norm or parameter norm; the last checkpoint
      written before the divergence is named and nothing after it was saved
  75  pre-empted (SIGTERM): a checkpoint was saved; run the same command again to resume
      (75 is EX_TEMPFAIL of sysexits.h, "try again later")

What counts as a user error: subclasses of `UserError`, the types given to
`register_user_errors` (errors defined where this module cannot be imported from, such as the
data builders'), absl's `app.UsageError` and flag-parsing errors. This module imports absl and
ml_collections only, so that every layer may raise its errors.
"""
from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys
from typing import Any, Callable, Iterable, NoReturn, Sequence

import ml_collections
from absl import app
from absl import flags
from absl import logging

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_PREEMPTED = 75

EXIT_CODES = {
    EXIT_OK: "finished",
    EXIT_BUG: "a bug (unexpected exception; traceback printed)",
    EXIT_USER_ERROR: "user error (flags, config, paths, starting point, data)",
    EXIT_NON_FINITE: "stopped on a non-finite loss, gradient norm or parameter norm",
    EXIT_PREEMPTED: "pre-empted: checkpoint saved, run the same command again to resume",
}


class UserError(Exception):
  """A mistake of the user's: its message names the thing, what was expected, what to do."""
  exit_code = EXIT_USER_ERROR


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value and stopped (not a bug, not the user's typo)."""
  exit_code = EXIT_NON_FINITE


_REGISTERED: list[type] = []


def register_user_errors(*types: type) -> tuple[type, ...]:
  """Marks `types` as user errors for `run_cli`; returns every user-error type so far."""
  for t in types:
    if t not in _REGISTERED:
      _REGISTERED.append(t)
  return user_error_types()


def user_error_types() -> tuple[type, ...]:
  return (UserError, *_REGISTERED)


def exit_code_of(error: BaseException, user_errors: Iterable[type] = ()) -> int | None:
  """The exit code for `error`, or None when it is a bug (to be raised with its traceback)."""
  code = getattr(error, "exit_code", None)
  if isinstance(code, int) and isinstance(error, (UserError, NonFiniteError)):
    return code
  if isinstance(error, (*user_error_types(), *tuple(user_errors), app.UsageError,
                        flags.Error)):
    return EXIT_USER_ERROR
  return None


def message_of(error: BaseException) -> str:
  """The text of `error` (a KeyError's message without the quotes repr adds)."""
  if isinstance(error, KeyError) and type(error).__str__ is KeyError.__str__ and error.args:
    return str(error.args[0])
  return str(error) or type(error).__name__


def did_you_mean(word: str, known: Iterable[str], n: int = 2, prefix: str = "") -> str:
  """`" (did you mean 'x'?)"` for the closest of `known` to `word`, or `""` (with `prefix`:
  `" (did you mean --config.x?)"`)."""
  close = difflib.get_close_matches(str(word), sorted({str(k) for k in known}), n=n,
                                    cutoff=0.6)
  if not close:
    return ""
  names = [f"{prefix}{c}" if prefix else repr(c) for c in close]
  return f" (did you mean {' or '.join(names)}?)"


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
  """Prints `error: message` (once, on stderr; also to the absl log file when one is open)
  and exits with `code`."""
  text = message.strip()
  _log_to_file_only(text)
  sys.stdout.flush()
  sys.stderr.write(f"error: {text}\n")
  sys.stderr.flush()
  raise SystemExit(code)


def _log_to_file_only(text: str) -> None:
  """Records the message in the run's log file (log.INFO) without a second copy on stderr."""
  try:
    handler = logging.get_absl_handler().python_handler
    if not flags.FLAGS.is_parsed() or handler.stream in (sys.stderr, sys.__stderr__):
      return
    threshold = flags.FLAGS["stderrthreshold"].value
    logging.set_stderrthreshold("fatal")
    try:
      logging.error("error: %s", text)
    finally:
      logging.set_stderrthreshold(threshold)
  except Exception:  # noqa: BLE001 - the message itself is what matters
    pass


def run_cli(main: Callable[[list[str]], Any], *, config_flag: str | None = None,
            user_errors: Sequence[type] = (), argv: list[str] | None = None) -> NoReturn:
  """`app.run(main)` with every user error (flag parsing included) turned into one line.

  Args:
    main: the absl main function; it may return an exit code (e.g. `EXIT_PREEMPTED`).
    config_flag: the name of an ml_collections config-file flag (`config` for main.py): a
      wrong config file, config argument or `--config.key` override is named with the
      closest known names.
    user_errors: further exception types whose message is for the user.
  """

  def wrapped(args):
    try:
      return main(args)
    except app.UsageError as e:
      fail(message_of(e), EXIT_USER_ERROR)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs
      code = exit_code_of(e, user_errors)
      if code is None:
        raise
      fail(message_of(e), code)

  app.run(wrapped, argv=argv, flags_parser=lambda a: parse_flags(a, config_flag=config_flag))
  raise SystemExit(EXIT_OK)  # app.run exits itself; this is never reached


# --------------------------------------------------------------------------------------
# Flag parsing.


def parse_flags(argv: list[str], config_flag: str | None = None) -> list[str]:
  """`flags.FLAGS(argv)`; a parsing error ends the program with one `error:` line."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - explained below, or re-raised as a bug
    text = explain_flag_error(e, argv, config_flag)
    if text is None:
      raise
    fail(text, EXIT_USER_ERROR)
  if config_flag and config_flag in flags.FLAGS:
    value = flags.FLAGS[config_flag].value
    # config_flags defers a config file's IOError to the first use of the value.
    if value is not None and not isinstance(value, ml_collections.ConfigDict):
      fail(explain_flag_error(None, argv, config_flag)
           or f"--{config_flag}: the config could not be loaded", EXIT_USER_ERROR)
  return rest


def explain_flag_error(error: BaseException | None, argv: Sequence[str],
                       config_flag: str | None = None) -> str | None:
  """One line for an exception raised while parsing `argv`, or None when it looks like a bug."""
  if config_flag:
    spec = _flag_value(argv, config_flag)
    if spec is not None:
      config, problem = _load_config(spec, config_flag)
      if problem:
        return problem
      problem = _override_problem(config, argv, config_flag, error)
      if problem:
        return problem
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    own = _program_flags()
    return (f"unknown flag --{name}{did_you_mean(name, list(flags.FLAGS))}; this program's "
            f"flags are {', '.join('--' + f for f in own) or '(see --helpfull)'}"
            + ("; keys of the config are set with --config.key=value" if config_flag else ""))
  if isinstance(error, flags.Error):
    return _clean_flag_message(message_of(error))
  return None


def _program_flags() -> list[str]:
  by_module = flags.FLAGS.flags_by_module_dict()
  own = by_module.get(sys.argv[0]) or by_module.get(os.path.abspath(sys.argv[0])) or []
  return sorted({f.name for f in own})


def _clean_flag_message(text: str) -> str:
  """absl's messages, without their repetition: "flag --workdir=None: Flag --workdir must have
  a value other than None." → "--workdir is required: <its help>"."""
  first = text.strip().splitlines()[0] if text.strip() else text
  for name in _program_flags() or list(flags.FLAGS):
    if f"Flag --{name} must have a value other than None" in first:
      help_text = flags.FLAGS[name].help
      return f"--{name} is required ({help_text})"
  return first[len("flag "):] if first.startswith("flag --") else first


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value given to `--name` in `argv` (`--name=v` or `--name v`), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(spec: str, flag: str) -> tuple[Any, str | None]:
  """`(config, None)` for `path[:argument]`, or `(None, message)` naming what is wrong."""
  path, colon, arg = spec.partition(":")
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    known = sorted(p for p in glob.glob(os.path.join(folder, "*.py"))
                   if os.path.basename(p) not in ("__init__.py", "common.py"))
    if not known:
      known = sorted(glob.glob(os.path.join("configs", "*.py")))
      known = [p for p in known if os.path.basename(p) not in ("__init__.py", "common.py")]
    return None, (f"--{flag}={spec}: the config file {path!r} does not exist"
                  f"{did_you_mean(path, known)}; config files: {', '.join(known) or 'none'} "
                  "(run from the repository root, e.g. --config=configs/pretrain.py:demo)")
  name = f"_uniemox_cli_config_{abs(hash(os.path.abspath(path)))}"
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)  # a config that fails to import is a bug: raised
  if not hasattr(module, "get_config"):
    return None, f"--{flag}={spec}: {path} defines no get_config(); is it a config file?"
  try:
    config = module.get_config(arg) if colon else module.get_config()
  except (KeyError, ValueError, TypeError) as e:  # configs raise these for bad arguments
    return None, f"--{flag}={spec}: {message_of(e)}"
  return config, None


def _override_names(argv: Sequence[str], flag: str) -> list[tuple[str, str | None]]:
  """`[(dotted key, value or None)]` of every `--flag.key=value` in `argv`."""
  out = []
  for i, arg in enumerate(argv):
    for prefix in (f"--{flag}.", f"--no{flag}."):
      if arg.startswith(prefix):
        key, eq, value = arg[len(prefix):].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
          value = argv[i + 1]
        out.append((key, value if (eq or value) else None))
  return out


def config_keys(config, prefix: str = "") -> list[str]:
  """Every dotted key of a ConfigDict (groups and leaves)."""
  keys = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    keys.append(path)
    if hasattr(value, "items") and hasattr(value, "to_dict"):
      keys += config_keys(value, f"{path}.")
  return keys


def _override_problem(config, argv: Sequence[str], flag: str,
                      error: BaseException | None) -> str | None:
  """The first `--flag.key` override that names no key or whose value does not parse."""
  if config is None:
    return None
  all_keys = config_keys(config)
  last = dict(_override_names(argv, flag))  # a repeated flag: the last one counts
  for key, value in last.items():
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
      parent = ".".join(parts[:depth])
      if not hasattr(node, "to_dict") or part not in node:
        where = f"{flag}.{parent}" if parent else flag
        if not hasattr(node, "to_dict"):
          return (f"--{flag}.{key}: {where} is a value ({node!r}), not a group of keys; "
                  f"set it with --{where}=...")
        siblings = sorted(node.keys())
        # The closest sibling with the rest of the key kept (modle.variant → model.variant),
        # else a key elsewhere with this name or a close one (lr → optim.lr).
        close = difflib.get_close_matches(part, siblings, n=2, cutoff=0.6)
        guesses = [".".join([*parts[:depth], c, *parts[depth + 1:]]) for c in close]
        guesses = ([g for g in guesses if g in all_keys]
                   or [".".join([*parts[:depth], c]) for c in close])
        if not guesses:
          by_leaf = {k.split(".")[-1]: k for k in sorted(all_keys, key=len, reverse=True)}
          guesses = [by_leaf[n] for n in difflib.get_close_matches(part, list(by_leaf), n=2,
                                                                   cutoff=0.75)]
        hint = (f" (did you mean {' or '.join(f'--{flag}.{g}' for g in guesses)}?)"
                if guesses else "")
        return (f"--{flag}.{key}: {where} has no key {part!r}{hint}; its keys are "
                f"{', '.join(siblings)}")
      if depth < len(parts) - 1:
        node = node[part]
    if isinstance(error, flags.Error) and f"--{flag}.{key}" in message_of(error):
      leaf = parts[-1]
      kind = node.get_type(leaf) if hasattr(node, "get_type") else type(node[leaf])
      reason = message_of(error).split(": ", 1)[-1].splitlines()[0]
      return (f"--{flag}.{key}={value}: expected {getattr(kind, '__name__', kind)} "
              f"(default {node[leaf]!r}): {reason}")
  return None
