"""Kernel versions as named sets of behaviours.

A behaviour (a `Feature`) is one change to the cross-call path, with the commit that introduced it. A
kernel version is a set of features; a what-if kernel is a version with features added or removed
(`v4.12+coalesce_many`) or a TOML file. The model in `smp.py` asks `kernel.has(...)` and nothing else, so
new combinations need no code.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ipilab.files import TomlFileError, read_toml
from ipilab.validation import ConfigError


class KernelSpecError(ConfigError):
    """A kernel name, feature or config file that does not make sense; the message says which."""


@dataclass(frozen=True)
class Feature:
    name: str
    summary: str
    commit: str
    release: str


@dataclass(frozen=True)
class Kernel:
    name: str
    features: frozenset[str]
    description: str = ""

    def has(self, feature: str) -> bool:
        return feature in self.features


def _load_catalogue() -> tuple[dict[str, Feature], dict[str, Kernel], dict[str, str]]:
    data = tomllib.loads(resources.files("ipilab.kernel").joinpath("versions.toml").read_text())
    features = {
        name: Feature(name, f["summary"], f["commit"], f["release"]) for name, f in data["features"].items()
    }
    versions: dict[str, Kernel] = {}
    for name, v in data["versions"].items():
        unknown = set(v["features"]) - features.keys()
        if unknown:
            raise KernelSpecError(f"versions.toml: {name} names unknown features {sorted(unknown)}")
        versions[name] = Kernel(name, frozenset(v["features"]), v.get("description", ""))
    return features, versions, dict(data.get("aliases", {}))


FEATURES, VERSIONS, ALIASES = _load_catalogue()


def _feature(name: str, where: str) -> str:
    name = ALIASES.get(name, name)
    if name not in FEATURES:
        raise KernelSpecError(f"{where}: unknown feature {name!r}; known: {', '.join(sorted(FEATURES))}")
    return name


def kernel_from_expr(expr: str) -> Kernel:
    """`v4.12`, `v4.12+coalesce_many`, `v6.18-skip_polling_idle+...`: a version with features toggled."""
    base, *rest = re.split(r"([+-])", expr.strip())
    toggles = list(zip(rest[0::2], rest[1::2], strict=True))
    if base not in VERSIONS:
        raise KernelSpecError(f"unknown kernel {base!r}; known: {', '.join(VERSIONS)} (see `ipilab kernels`)")
    features = set(VERSIONS[base].features)
    for sign, name in toggles:
        f = _feature(name, f"kernel {expr!r}")
        if sign == "+":
            features.add(f)
        else:
            features.discard(f)
    return Kernel(expr, frozenset(features), VERSIONS[base].description if not toggles else f"what-if: {expr}")


def kernel_from_file(path: Path) -> Kernel:
    """A TOML file: `name`, `base` (a known version), and lists `add` / `remove` of feature names."""
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise KernelSpecError(str(e)) from None
    base = data.get("base")
    if not isinstance(base, str) or base not in VERSIONS:
        raise KernelSpecError(f"{path}: field 'base' must be one of {', '.join(VERSIONS)}, got {base!r}")
    extra = set(data) - {"name", "base", "add", "remove", "description"}
    if extra:
        raise KernelSpecError(f"{path}: unknown fields {sorted(extra)}; allowed: name, base, add, remove, "
                              "description")
    for key in ("add", "remove"):
        names = data.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise KernelSpecError(f"{path}: field {key!r} must be a list of feature names such as "
                                  f'["coalesce_many"], got {names!r}')
    for key in ("name", "description"):
        if not isinstance(data.get(key, ""), str):
            raise KernelSpecError(f"{path}: field {key!r} must be a string, got {data[key]!r}")
    features = set(VERSIONS[base].features)
    features |= {_feature(n, f"{path}: add") for n in data.get("add", [])}
    features -= {_feature(n, f"{path}: remove") for n in data.get("remove", [])}
    name = data.get("name", path.stem)
    return Kernel(name, frozenset(features), data.get("description", f"what-if from {path.name}"))


def resolve_kernel(spec: str) -> Kernel:
    """A version name, a `+feature/-feature` expression, or the path of a TOML file."""
    if spec.endswith(".toml"):
        return kernel_from_file(Path(spec))
    return kernel_from_expr(spec)
