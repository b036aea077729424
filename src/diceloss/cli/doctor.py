"""``diceloss doctor module:Name``: check a hand-written loss for the classic faults.

``Name`` is an ``nn.Module`` class (built with ``--kwargs``), a function (called with ``--kwargs`` as extra
keyword arguments), an ``autograd.Function`` class (its ``apply`` is checked), or an instance of any of these.
``module`` is a dotted module name found on the current directory or the installed packages, or a path to a
``.py`` file. The module is imported, so its top level runs (with ``sys.argv`` holding only ``module``, so a
top-level ``argparse`` sees no arguments); a ``sys.exit()`` there is a load error. When the loss takes a
``mode`` argument and ``--mode`` is given, it is passed (unless ``--kwargs`` names it). Exit code 0 when
every check passes, 1 when one fails, 2 when the loss cannot be loaded.

Example:
    $ diceloss doctor my_losses:SoftDice --mode multiclass --inputs logits --target index
    $ diceloss doctor train.py:dice_loss --mode binary --kwargs '{"smooth": 1.0}'
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn


class LoadError(Exception):
    """The loss named on the command line cannot be found or built."""


@contextlib.contextmanager
def _argv_of(module: str):
    """``sys.argv`` holds only ``module`` while the user's module runs (a top-level argparse sees no options)."""
    saved = sys.argv
    sys.argv = [module]
    try:
        yield
    finally:
        sys.argv = saved


def _exit_error(module: str, e: SystemExit) -> LoadError:
    return LoadError(
        f"importing {module} called sys.exit() (SystemExit with code {e.code!r}): the module's top level runs "
        "when doctor imports it; expected a module that defines the loss, got one that exits (move the script "
        'part under `if __name__ == "__main__":`)'
    )


def _import(module: str):
    if module.endswith(".py") or os.sep in module:
        path = Path(module)
        if not path.is_file():
            raise LoadError(f"no file {module}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        added = sys.modules.setdefault(path.stem, mod) is mod
        try:
            with _argv_of(module):
                spec.loader.exec_module(mod)
        except (Exception, SystemExit) as e:
            if added:
                sys.modules.pop(path.stem, None)
            if isinstance(e, SystemExit):
                raise _exit_error(module, e) from e
            raise LoadError(f"running {module} raised {type(e).__name__}: {e}") from e
        return mod
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # the user's own modules, next to where they run the command
    try:
        with _argv_of(module):
            return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise LoadError(
            f"cannot import module {module!r} ({e}); run from the directory that holds it, or install it"
        ) from e
    except SystemExit as e:
        raise _exit_error(repr(module), e) from e
    except Exception as e:  # the user's module itself fails to import
        raise LoadError(f"importing {module!r} raised {type(e).__name__}: {e}") from e


def _takes_mode(obj) -> bool:
    """Whether ``obj`` (a class or a function) has a parameter ``mode`` that can be passed by keyword."""
    try:
        param = inspect.signature(obj).parameters.get("mode")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _check_kwargs(fn, kwargs: dict, spec: str) -> None:
    """A load error naming each keyword ``fn(input, target, **kwargs)`` does not take (a --kwargs typo)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check against (some builtins): the call will tell
        return
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        options = [n for n in names[2:] if n not in kwargs] if len(names) >= 2 else names
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, options, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise LoadError(
            f"{spec} takes no keyword argument {', '.join(hints)} from --kwargs; expected keywords of "
            f"{spec}{sig}: {', '.join(options) or 'none'}"
        )
    try:
        sig.bind(None, None, **kwargs)
    except TypeError as e:
        raise LoadError(
            f"{spec} cannot be called as loss(input, target, **kwargs) with kwargs {kwargs}: {e}; its "
            f"signature is {sig}"
        ) from e


def load_loss(spec: str, kwargs: dict | None = None, mode: str | None = None):
    """The loss ``loss(input, target)`` named by ``module:Name`` (``Name`` may be dotted) and its name.

    ``mode`` (``--mode`` when given) is passed to a class or function that takes a ``mode`` argument, unless
    ``kwargs`` names one.
    """
    kwargs = dict(kwargs or {})
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr:
        raise LoadError(f"expected MODULE:NAME (for example my_losses:SoftDice), got {spec!r}")
    obj = _import(module)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise LoadError(f"{module!r} has no attribute {attr!r}") from e
    if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function):
        if kwargs:
            raise LoadError("an autograd.Function takes no --kwargs; its apply(input, target) is checked")
        return obj.apply, f"{spec} (apply)"
    if mode is not None and "mode" not in kwargs and not isinstance(obj, nn.Module) and _takes_mode(obj):
        kwargs["mode"] = mode
    if inspect.isclass(obj):
        try:
            return obj(**kwargs), spec
        except Exception as e:
            raise LoadError(f"cannot build {spec} with kwargs {kwargs}: {type(e).__name__}: {e}") from e
    if not callable(obj):
        raise LoadError(
            f"{spec} is a {type(obj).__name__}, not a loss (a class, function or autograd.Function)"
        )
    if kwargs:
        if isinstance(obj, nn.Module):
            raise LoadError(f"{spec} is already built; --kwargs applies to classes and functions")
        _check_kwargs(obj, kwargs, spec)
        obj = functools.partial(obj, **kwargs)
    return obj, spec


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor",
        help="check a hand-written loss for the classic faults",
        description=(
            "Check a hand-written segmentation loss: gradient against finite differences, perfect and wrong "
            "predictions, range, gradient descent, empty masks, float16, batch-size independence. "
            "The module (or file) is imported, so its top level runs, with sys.argv holding only the module; "
            'keep training code under `if __name__ == "__main__":`. '
            "Exit code 0 when every check passes, 1 when one fails, 2 when the loss cannot be loaded."
        ),
    )
    p.add_argument(
        "loss",
        metavar="MODULE:NAME",
        help="the loss: an nn.Module class, a function or an autograd.Function class (module on the "
        "current directory or installed; or path/to/file.py:NAME); the module is imported and its top level "
        "runs",
    )
    p.add_argument(
        "--mode",
        choices=("binary", "multiclass", "multilabel"),
        default=None,
        help="binary: input and target (B, 1, H, W); multiclass: input (B, C, H, W); multilabel: both "
        "(B, C, H, W) (default: multiclass); passed to a loss that takes a `mode` argument",
    )
    p.add_argument(
        "--inputs",
        choices=("logits", "probs"),
        default="logits",
        help="what the loss expects as input (default: logits)",
    )
    p.add_argument(
        "--target",
        choices=("index", "onehot"),
        default="index",
        help="multiclass target: class indices (B, H, W) int64 or one-hot (B, C, H, W) (default: index)",
    )
    p.add_argument(
        "--kwargs",
        default="{}",
        metavar="JSON",
        help="keyword arguments for the constructor (or the function), as a JSON object",
    )
    p.add_argument("--num-classes", type=int, default=3, help="C of the generated problems (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data (default: 0)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import doctor

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        print(f"diceloss doctor: --kwargs is not valid JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print(f"diceloss doctor: --kwargs must be a JSON object, got {args.kwargs}", file=sys.stderr)
        return 2
    try:
        loss_fn, name = load_loss(args.loss, kwargs, mode=args.mode)
        report = doctor.check(
            loss_fn,
            mode=args.mode or "multiclass",
            inputs=args.inputs,
            target=args.target,
            num_classes=args.num_classes,
            seed=args.seed,
            name=name,
        )
    except (LoadError, ValueError, TypeError) as e:
        print(f"diceloss doctor: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1
