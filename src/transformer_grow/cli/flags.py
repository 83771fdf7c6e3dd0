"""Command-line flags generated from the configuration dataclasses.

Each field of a config dataclass (:class:`~transformer_grow.model.ModelConfig`,
:class:`~transformer_grow.train.TrainConfig`, :class:`~transformer_grow.data.DataConfig`,
:class:`~transformer_grow.plans.builders.PlanOptions`...) becomes one flag, as LitGPT and torchtitan
derive theirs: the dataclass is the one source of the names, types, defaults and documentation.

* name: ``--field-name`` (underscores become dashes), unless a :class:`ConfigFlags` renames it
  (where the plain name would be ambiguous on a command), plus any legacy aliases (``--tie``);
* type, from the annotation: ``bool`` -> ``--x/--no-x``; ``int`` -> a count (``1000``, ``1e6``,
  ``10M``); ``float``; ``str``; ``X | None`` -> ``X``; ``list[int|float|str]`` -> comma-separated;
  other lists, dicts and nested dataclasses -> YAML/JSON text. A field of any other type is refused
  when the parser is built, so a new field cannot silently go without a flag;
* help: the field's entry in the class docstring's ``Attributes:`` section (Google style), plus the
  allowed values and the dataclass default;
* default: ``None`` ("not given"), so a flag overrides a preset, config file or checkpoint only when
  it is actually on the command line. Allowed values are listed in the help but checked by the
  dataclass's own validation, which gives the same one-line error for flags and config files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from transformer_grow.counts import count_value
from transformer_grow.io import DuplicateKeyError, load_json  # noqa: F401 - re-exported with load_yaml

_MISSING = dataclasses.MISSING


def parse_count(text: str) -> int:
    """An integer count written as ``1000``, ``1e6``, ``10M``, ``2.5B`` or ``500k``: the package's one count
    syntax (:func:`transformer_grow.counts.count_value`); a sign is kept for the config's own check."""
    value = count_value(str(text))
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 1000, 1e6, 10M, 2.5B)")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


# ---------------------------------------------------------------------------- YAML and JSON text
class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (merge keys ``<<`` may be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML refuses it itself
                    continue
                if duplicate:
                    raise DuplicateKeyError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1}); "
                                            "give each setting once")
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


# ---------------------------------------------------------------------------- documentation
_ENTRY = re.compile(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_ROLE = re.compile(r":\w+:`~?(?:[\w.]*\.)?([^`.]+)`")  # :class:`~a.b.Name` -> Name


def _plain(text: str) -> str:
    """Docstring markup to terminal text."""
    text = _ROLE.sub(r"\1", text).replace("``", "")
    return re.sub(r"\s+", " ", text).strip()


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of ``cls``'s docstring (Google style)."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return {}
    section_indent = len(lines[start]) - len(lines[start].lstrip())
    docs: dict[str, list[str]] = {}
    entry_indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= section_indent:  # the next section
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = _ENTRY.match(line.strip()) if indent == entry_indent else None
        if match:
            current = match.group(1)
            docs[current] = [match.group(2)]
        elif current is not None:
            docs[current].append(line.strip())
    return {name: _plain(" ".join(parts)) for name, parts in docs.items()}


# ---------------------------------------------------------------------------- types
def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [k for k in typing.get_args(kind) if k is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


_SCALARS: dict[type, Callable[[str], Any]] = {int: parse_count, float: _parse_float, str: str}


def _comma_list(element: type) -> Callable[[str], list]:
    parse = _SCALARS[element]

    def parse_list(text: str) -> list:
        try:
            return [parse(part.strip()) for part in text.split(",") if part.strip()]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list ({e})") from None

    parse_list.__name__ = f"comma-separated {element.__name__} list"  # argparse names it in errors
    return parse_list


def _yaml_value(kind: Any) -> Callable[[str], Any]:
    """YAML/JSON text for a list, a dict or a nested dataclass (a mapping of its fields)."""
    origin = typing.get_origin(kind) or kind
    expected = dict if dataclasses.is_dataclass(kind) else origin

    def parse_yaml(text: str) -> Any:
        try:
            value = load_yaml(text)
        except DuplicateKeyError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        except yaml.YAMLError:
            raise argparse.ArgumentTypeError(f"{text!r} is not YAML/JSON") from None
        if not isinstance(value, expected):
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'mapping' if expected is dict else 'list'}")
        if dataclasses.is_dataclass(kind):
            names = [f.name for f in dataclasses.fields(kind)]
            unknown = sorted(set(map(str, value)) - set(names))
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
            return kind(**value)
        return value

    parse_yaml.__name__ = "YAML/JSON value"
    return parse_yaml


def _argparse_kwargs(kind: Any, where: str) -> dict[str, Any]:
    """``add_argument`` keywords for a field annotated ``kind``; ``TypeError`` when it has no flag form."""
    kind = _unwrap_optional(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in _SCALARS:
        return {"type": _SCALARS[kind], "metavar": {int: "N", float: "X", str: None}[kind]}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list and len(args) == 1 and args[0] in _SCALARS:
        return {"type": _comma_list(args[0]), "metavar": "A,B,..."}
    if origin in (list, dict) or dataclasses.is_dataclass(kind):
        return {"type": _yaml_value(kind), "metavar": "YAML"}
    raise TypeError(f"{where}: no command-line form for a field of type {kind!r}; give it a supported type "
                    "(bool, int, float, str, a list or dict, a dataclass)")


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return str(value)


def dataclass_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field (``MISSING`` when it has none)."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


# ---------------------------------------------------------------------------- flags of one dataclass
@dataclass(frozen=True)
class ConfigFlags:
    """How the fields of one config dataclass appear on a command line.

    Attributes:
        cls: the dataclass.
        title: the help section the flags are listed under.
        rename: field -> flag name (without dashes) where ``--field-name`` would be ambiguous.
        aliases: field -> further spellings kept for compatibility (e.g. ``--tie``).
        choices: field -> allowed values, listed in the help (the dataclass validates them).
        exclude: fields that get no flag on this command (the command sets them itself).
        default_notes: field -> what the help says instead of the dataclass default (e.g. when a
            preset decides it).
        defaults_from: when set, every field's help names this as its default source instead.
    """

    cls: type
    title: str
    rename: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    default_notes: Mapping[str, str] = field(default_factory=dict)
    defaults_from: str | None = None

    def variant(self, **changes: Any) -> ConfigFlags:
        """A copy for another command (e.g. other exclusions or default notes)."""
        return dataclasses.replace(self, **changes)

    def fields(self) -> list[dataclasses.Field]:
        """The dataclass fields that get a flag here."""
        return [f for f in dataclasses.fields(self.cls) if f.name not in self.exclude]

    def flag(self, name: str) -> str:
        """The main spelling of field ``name``'s flag."""
        return "--" + self.rename.get(name, name.replace("_", "-"))

    def dest(self, name: str) -> str:
        """The ``argparse`` attribute holding field ``name``'s value."""
        return self.flag(name)[2:].replace("-", "_")

    def help(self, f: dataclasses.Field) -> str:
        text = field_docs(self.cls).get(f.name, "")
        if self.defaults_from is not None:
            note = self.defaults_from
        elif f.name in self.default_notes:
            note = self.default_notes[f.name]
        else:
            default = dataclass_default(f)
            note = None if default is _MISSING or default is None else _format_default(default)
        if note:
            text = f"{text.rstrip('.')} (default: {note})"
        return text.replace("%", "%%")  # argparse %-formats help texts

    def add_to(self, parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
        """Register one flag per field (default ``None``: "not given") in a group titled :attr:`title`."""
        hints = typing.get_type_hints(self.cls)
        group = parser.add_argument_group(self.title)
        for f in self.fields():
            kwargs = _argparse_kwargs(hints[f.name], f"{self.cls.__name__}.{f.name}")
            if f.name in self.choices:
                kwargs["metavar"] = "{" + ",".join(self.choices[f.name]) + "}"
            group.add_argument(self.flag(f.name), *self.aliases.get(f.name, ()), dest=self.dest(f.name),
                               default=None, help=self.help(f), **kwargs)
        return group

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """``{field: value}`` of the fields whose flag is on the command line."""
        values = {f.name: getattr(args, self.dest(f.name), None) for f in self.fields()}
        return {name: value for name, value in values.items() if value is not None}


__all__ = ["ConfigFlags", "DuplicateKeyError", "dataclass_default", "field_docs", "load_json", "load_yaml",
           "parse_count"]
