"""YAML a user wrote (job configs, compare configs, eval prompts, `--set` values), parsed strictly.

    python -c "from smoltune.yaml_input import parse_yaml; parse_yaml('a: 1\\na: 2', 'job.yaml')"   # ConfigError

PyYAML's safe loader keeps the last of two equal keys silently (so `lr: 1e-4` written twice under `train:`
trains with whichever came last) and expands aliases without limit (a few lines of anchors make a structure of
billions of nodes once validated). No YAML library in the dependency set refuses either, so this subclass does:
a duplicate key names both lines, and more than `MAX_ALIASES` alias uses is refused.
"""

from __future__ import annotations

from typing import Any

import yaml

from smoltune.errors import ConfigError

MAX_ALIASES = 100


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name); write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding a key is not a duplicate
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.YAMLError(f"line {line}: duplicate key {key!r} (first on line {seen[key]}); keep one")
            except TypeError:  # an unhashable key (a list or mapping used as a key)
                raise yaml.YAMLError(f"line {line}: a key must be a plain value") from None
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`; any problem (syntax, duplicate key, alias bomb, nesting past the recursion
    limit) is one ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {' '.join(str(err).split())[:300]}"], source) from None
    except RecursionError:
        raise ConfigError(["YAML nested too deeply"], source) from None
