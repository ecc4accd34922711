"""The registry of environment families: what evaluation can build from a spec string.

A spec is ``<family>/<name>`` (``mamujoco/HalfCheetah-2x3``, ``smax/3m``) or a bare ``<family>``
for a family whose names may be empty. Each family is one :class:`EnvFamily` record, made by
:func:`register_family`; the built-in ones register themselves in ``mamujoco.py`` and
``smax.py``. A dataset's ``env`` attribute may be any string: a spec of no registered family
still trains, and :func:`evaluation_status` says why evaluation is skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from .base import BatchedEnv

ACTION_SPACES = ("continuous", "discrete")
# A family name is the part of a spec before the first "/": no slash, no spaces.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class EnvUnavailableError(RuntimeError):
    """The package an environment family needs is not installed (the message says how to)."""


@dataclass(frozen=True)
class EnvFamily:
    """One environment family, as :func:`register_family` recorded it.

    ``make(name, n_envs)`` builds a :class:`~vgm2p_fast.envs.base.BatchedEnv` of ``n_envs``
    environments for the ``<name>`` part of a spec; ``pattern`` is what that part must match
    (in full); ``syntax`` and ``example`` are what errors and help texts show; ``requires`` are
    the modules that must be installed, from the pip ``package`` (installed by ``install``);
    ``default_n_envs`` is the batch of ``rollout`` when its caller gives none.
    """

    name: str
    make: Callable[[str, int], BatchedEnv]
    action_space: str
    pattern: re.Pattern[str]
    syntax: str
    example: str | None
    requires: tuple[str, ...]
    package: str | None
    install: str | None
    default_n_envs: int

    def describe(self) -> str:
        """``'mamujoco/<scenario>-<agent_conf>' such as 'mamujoco/HalfCheetah-2x3'``."""
        return f"{self.syntax!r}" + (f" such as {self.example!r}" if self.example else "")


_FAMILIES: dict[str, EnvFamily] = {}


def register_family(
    name: str,
    make_fn: Callable[[str, int], BatchedEnv],
    *,
    action_space: str,
    pattern: str | re.Pattern[str] = ".*",
    syntax: str | None = None,
    example: str | None = None,
    requires: Sequence[str] = (),
    package: str | None = None,
    install: str | None = None,
    default_n_envs: int = 16,
    replace: bool = False,
) -> EnvFamily:
    """Register an environment family, so that ``evaluate``/``rollout``/``env_info`` build it.

    ``make_fn(name, n_envs)`` receives the part of the spec after ``"<family>/"`` (``""`` for a
    bare ``"<family>"``) and a batch size ``n_envs >= 1``, and returns an object that follows
    :class:`~vgm2p_fast.envs.base.BatchedEnv` (sizes, ``obs``/``state``/``avail`` arrays,
    ``reset(slots, seeds)``, ``step(actions, active)``). ``action_space``: ``"continuous"`` or
    ``"discrete"`` (a dataset naming this family must have that space). ``pattern``: a regex the
    name must match in full (default: anything). ``syntax``/``example``: shown in errors
    (default ``"<family>/<name>"``; ``example`` must itself be a valid spec). ``requires``:
    module names that must be installed for evaluation to run (checked without importing
    them); ``package``/``install``: the pip package and the install command errors name
    (default ``pip install <package>``). ``default_n_envs``: environments stepped together when
    ``rollout`` is not told. ``replace=True`` overwrites a family of the same name.

    Returns the new :class:`EnvFamily`. Raises ValueError naming the argument that is wrong.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"name: expected a family name of letters, digits, '_', '.', '-' "
                         f"(no '/'), found {name!r}")
    if not isinstance(replace, bool):
        raise ValueError(f"replace: expected a bool, found {replace!r}")
    if name in _FAMILIES and not replace:
        raise ValueError(f"name: expected a family not yet registered, found {name!r} "
                         f"(registered: {', '.join(_FAMILIES)}); pass replace=True to replace it")
    if not callable(make_fn):
        raise ValueError(f"make_fn: expected a callable make_fn(name, n_envs) -> env, found "
                         f"{type(make_fn).__name__}")
    if action_space not in ACTION_SPACES:
        raise ValueError(f"action_space: expected 'continuous' or 'discrete', found "
                         f"{action_space!r}")
    if isinstance(pattern, str):
        try:
            pattern = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern: expected a regular expression, found {pattern!r} "
                             f"({exc})") from None
    elif not isinstance(pattern, re.Pattern):
        raise ValueError(f"pattern: expected a regex string or re.Pattern, found "
                         f"{type(pattern).__name__}")
    for key, val in (("syntax", syntax), ("example", example), ("package", package),
                     ("install", install)):
        if val is not None and (not isinstance(val, str) or not val):
            raise ValueError(f"{key}: expected None or a non-empty string, found {val!r}")
    if (isinstance(requires, str) or not isinstance(requires, Sequence)
            or not all(isinstance(m, str) and _MODULE_RE.fullmatch(m) for m in requires)):
        raise ValueError(f"requires: expected a list of module names such as ['jaxmarl'], "
                         f"found {requires!r}")
    if (isinstance(default_n_envs, bool) or not isinstance(default_n_envs, int)
            or default_n_envs < 1):
        raise ValueError(f"default_n_envs: expected an int >= 1, found {default_n_envs!r}")
    family = EnvFamily(name=name, make=make_fn, action_space=action_space, pattern=pattern,
                       syntax=syntax or f"{name}/<name>", example=example,
                       requires=tuple(requires), package=package,
                       install=install or (f"pip install {package}" if package else None),
                       default_n_envs=default_n_envs)
    if example is not None:
        fam, _, rest = example.partition("/")
        if fam != name or not pattern.fullmatch(rest):
            raise ValueError(f"example: expected a spec of this family ('{name}/<name>' with "
                             f"<name> matching {pattern.pattern!r}), found {example!r}")
    _FAMILIES[name] = family
    return family


def families() -> tuple[str, ...]:
    """Names of the registered families, in registration order (built-ins first)."""
    return tuple(_FAMILIES)


def get_family(name: str) -> EnvFamily:
    """The record of family ``name``; ValueError (naming the registered ones) if there is none."""
    if name not in _FAMILIES:
        raise ValueError(f"family: expected a registered environment family ({', '.join(_FAMILIES)}"
                         f"; see vgm2p_fast.envs.register_family), found {name!r}")
    return _FAMILIES[name]


def _family_part(spec: object) -> str:
    if not isinstance(spec, str) or not spec.strip():
        examples = ", ".join(repr(f.example) for f in _FAMILIES.values() if f.example)
        found = repr(spec) if isinstance(spec, str) else type(spec).__name__
        raise ValueError(f"spec: expected a non-empty string such as {examples}, found {found}")
    return spec.partition("/")[0]


def find_family(spec: str) -> EnvFamily | None:
    """The registered family ``spec`` names (its part before the first ``/``), or None.

    Does not check the rest of the spec (:func:`parse_env_spec` does). ValueError if ``spec``
    is not a non-empty string.
    """
    return _FAMILIES.get(_family_part(spec))


def parse_env_spec(spec: str) -> tuple[str, str]:
    """``"mamujoco/HalfCheetah-2x3"`` -> ``("mamujoco", "HalfCheetah-2x3")``.

    Raises ValueError for a spec of no registered family, and for one whose name does not match
    its family's pattern (``mamujoco/HalfCheetah``: a typo, not a foreign simulator).
    """
    family = find_family(spec)
    if family is None:
        raise ValueError(f"spec: expected '<family>/<name>' with a registered family "
                         f"({', '.join(_FAMILIES)}; see vgm2p_fast.envs.register_family), "
                         f"found {spec!r}")
    name = spec.partition("/")[2]
    if not family.pattern.fullmatch(name):
        raise ValueError(f"spec: expected {family.describe()}, found {spec!r}")
    return family.name, name


def spec_help() -> str:
    """One line for help texts: the registered syntaxes, and that other names train only."""
    known = ", ".join(f.syntax + (f" (e.g. {f.example})" if f.example else "")
                      for f in _FAMILIES.values())
    return f"{known}, or any other name (training only: evaluation is then skipped)"


def _unavailable(family: EnvFamily, module: str, why: str) -> str:
    package = family.package or module
    hint = f"; install it with `{family.install}`" if family.install else ""
    return f"{family.name} environments need the package {package} ({module} {why}){hint}"


def _missing_module(family: EnvFamily) -> str | None:
    """The first of ``family.requires`` that is not installed, or None (nothing imported)."""
    for module in family.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing, or sys.modules[m] None
            found = False
        if not found:
            return module
    return None


def check_installed(family: EnvFamily) -> None:
    """Raise EnvUnavailableError when a module ``family`` requires is not installed."""
    module = _missing_module(family)
    if module is not None:
        raise EnvUnavailableError(_unavailable(family, module, "is not installed"))


def import_optional(family: str, module: str) -> ModuleType:
    """Import ``module`` for ``family``, or raise EnvUnavailableError with the install command.

    What the import prints goes to stderr (jaxmarl 0.2 prints two lines to stdout, which would
    break ``--json`` output), less gymnasium-robotics 1.4.2's notice about AdroitHand reward
    versions (farama_notifications; not about MaMuJoCo).
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            return importlib.import_module(module)
    except ImportError as exc:
        raise EnvUnavailableError(_unavailable(get_family(family), module,
                                               f"is not importable: {exc}")) from exc
    finally:
        kept = [line for line in printed.getvalue().splitlines(keepends=True)
                if "AdroitHand" not in line]
        sys.stderr.write("".join(kept))


@dataclass(frozen=True)
class EvaluationStatus:
    """Whether evaluation can run for a spec; ``bool(status)`` is ``status.available``.

    ``reason``: ``""`` when available, else one line starting ``"evaluation skipped: "``.
    """

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def evaluation_status(spec: str) -> EvaluationStatus:
    """Can ``evaluate`` run for ``spec``? Cheap: imports nothing (checks installed modules).

    Unavailable when no registered family has that name (``my-sim``, ``vmas/navigation``) or
    when a module the family requires is not installed; a broken install shows up later, as
    EnvUnavailableError from ``env_info``/``evaluate``. Raises ValueError for a spec that is
    not a non-empty string, or that names a registered family but breaks its syntax
    (``mamujoco/HalfCheetah``): a typo should fail before training, not skip evaluation.
    """
    family = find_family(spec)
    if family is None:
        return EvaluationStatus(False, f"evaluation skipped: no environment family "
                                f"{_family_part(spec)!r} is registered (registered: "
                                f"{', '.join(_FAMILIES)}); see vgm2p_fast.envs.register_family")
    parse_env_spec(spec)
    module = _missing_module(family)
    if module is not None:
        return EvaluationStatus(False, "evaluation skipped: "
                                + _unavailable(family, module, "is not installed"))
    return EvaluationStatus(True, "")
