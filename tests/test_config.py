"""Config loading: strict keys, type checks, overrides, clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from relsafe.config import apply_overrides, from_dict, load_config, to_dict
from relsafe.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    rank: int = 8


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    styles: tuple[str, ...] = ("plain",)
    out: Path | None = None

    def validate(self) -> None:
        if self.inner.rank <= 0:
            raise ConfigError("inner.rank must be positive")


def test_defaults_and_nested() -> None:
    cfg = from_dict(Outer, {"inner": {"lr": 1}, "styles": ["a", "b"], "out": "x/y"})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.styles == ("a", "b") and cfg.out == Path("x/y")
    assert to_dict(cfg)["out"] == "x/y"


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"nmae": "x"}, "unknown key(s) ['nmae']"),
        ({"inner": {"lr": "fast"}}, "config.inner.lr"),
        ({"mode": "c"}, "not one of ['a', 'b']"),
        ({"inner": {"rank": True}}, "expected an integer"),
        ({"inner": {"rank": 0}}, "inner.rank must be positive"),
        ({"styles": "plain"}, "expected a list"),
    ],
)
def test_errors_name_the_field(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        from_dict(Outer, data)
    assert needle in str(e.value)


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: run1\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, p, ["inner.rank=4", "mode=b"])
    assert (cfg.name, cfg.inner.lr, cfg.inner.rank, cfg.mode) == ("run1", 0.01, 4, "b")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\ninner: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert "bad.yaml" in str(e.value) and "line" in str(e.value)


def test_exponent_floats_without_a_dot() -> None:
    # YAML 1.1 reads 1e-3 as a string; a float field still accepts it
    assert load_config(Outer, None, ["inner.lr=1e-3"]).inner.lr == 1e-3


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, "/nonexistent/c.yaml")


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])
    assert apply_overrides({"a": [1, 2]}, ["a.1=5"]) == {"a": [1, 5]}
