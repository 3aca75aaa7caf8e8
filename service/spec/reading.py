"""Spec text to a ``SweepSpec``, safely: what the API and the CLI accept.

YAML is parsed with PyYAML's safe loader (no Python tags) and bounded: a document may hold at
most ``MAX_ALIASES`` aliases, nest at most ``MAX_DEPTH`` levels and expand (aliases followed) to
at most ``MAX_NODES`` nodes, so that a "billion laughs" document is refused before anything walks
it. JSON gets the same depth and size bounds. Every refusal is a ``SpecInputError`` that names
what is wrong and what is allowed.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

from service.spec.model import SweepSpec
from service.storage.paths import AnyPath, as_path
from trainers.validation import describe_errors

MAX_BYTES = 1 << 20  # 1 MiB: the largest spec of the paper's grids is a few KiB
MAX_DEPTH = 32
MAX_ALIASES = 100
MAX_NODES = 100_000

YAML_TYPES = ("application/x-yaml", "application/yaml", "text/yaml")
JSON_TYPES = ("application/json",)
ACCEPTED_TYPES = (*YAML_TYPES, *JSON_TYPES)


class SpecInputError(ValueError):
    """Spec text that cannot be read; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, counting aliases and nesting while it composes the document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecInputError(f"the YAML uses more than {MAX_ALIASES} aliases (*name)")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise SpecInputError(f"the YAML nests deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of the document with every alias followed (a shared node counts each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias (&a [*a]) counts once instead of looping
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def _load_yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise SpecInputError(f"the YAML expands to more than {MAX_NODES:,} values")
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SpecInputError(f"not valid YAML: {error}") from None
    except RecursionError:
        raise SpecInputError(f"the YAML nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        raise SpecInputError(f"the JSON nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def _load_json(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecInputError(f"not valid JSON: {error}") from None
    except RecursionError:
        raise SpecInputError(f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    _depth(value, MAX_DEPTH)
    return value


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, without parameters, lower case."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_spec(body: bytes, content_type: str | None = "application/yaml") -> dict[str, Any]:
    """A spec mapping from request bytes; ``SpecInputError`` (with its HTTP status) otherwise."""
    kind = media_type(content_type)
    if kind not in ACCEPTED_TYPES:
        raise SpecInputError(
            f"content type {kind or '(none)'!r} is not accepted; send the spec as YAML "
            f"({', '.join(YAML_TYPES)}) or JSON (application/json)",
            status=415,
        )
    if len(body) > MAX_BYTES:
        raise SpecInputError(
            f"the spec is {len(body):,} bytes; at most {MAX_BYTES:,} (1 MiB)", status=413
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecInputError(f"the spec is not UTF-8 text: {error}") from None
    value = _load_json(text) if kind in JSON_TYPES else _load_yaml(text)
    if not isinstance(value, dict):
        found = "nothing" if value is None else f"a {type(value).__name__}"
        raise SpecInputError(
            f"a spec is a mapping of settings (name, grid, ...); the document is {found}"
        )
    return value


def spec_from_dict(raw: dict[str, Any]) -> SweepSpec:
    """A spec from a mapping; a ValueError with one ``field.path: message`` per problem."""
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise ValueError(describe_errors(error)) from None


def load_spec(path: str | AnyPath) -> SweepSpec:
    """Read a spec from a YAML file; errors read ``file: field.path: message``.

    The same bounded reader as the service's (``parse_spec``): size, aliases and nesting are
    limited, so a spec that the service would refuse is refused here too.

    Example::

        spec = load_spec("search_spaces/smoke.yaml")
        print(spec.name, len(spec.grid.seeds))
    """
    path = as_path(path)  # a file, or an object of a bucket (the service's spec on S3)
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    try:
        return spec_from_dict(parse_spec(body))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
