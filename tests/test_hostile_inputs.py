"""Hostile inputs (issue 17, findings 1 and 7): YAML alias bombs and deep nesting in policies and
configs, non-UTF-8 files, bad ``--set`` paths, JSON of the wrong shape; plus property tests that
generate bad policies, config mappings and overrides and require a RelsafeError naming the input,
or success, and never another exception."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relsafe.config import apply_overrides, from_dict, load_config, load_yaml
from relsafe.errors import CheckpointError, ConfigError, InputError, RelsafeError
from relsafe.policy import Policy, load_policy

BOMB = "\n".join(
    [
        'a: &a ["x","x","x","x","x","x","x","x","x"]',
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "unsafe: [*i]",
    ]
)
DEEP = "unsafe: " + "[" * 5000 + "]" * 5000 + "\n"


def _w(tmp: Path, name: str, data: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


# ---- finding 1: alias bombs and deep nesting ------------------------------------------------------
@pytest.mark.parametrize("text, match", [(BOMB, "alias"), (DEEP, "nested deeper")])
def test_policy_bomb_and_deep_nesting_are_refused_quickly(tmp_path: Path, text: str, match: str):
    p = _w(tmp_path, "p.yaml", text)
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as ei:
        load_policy(p)
    assert str(p) in str(ei.value)
    assert time.perf_counter() - t < 5


def test_long_files_take_the_libyaml_path_under_the_same_bounds(tmp_path: Path) -> None:
    """Past 16 kB a document is composed by libyaml unless it nests too deeply: a padded alias
    bomb is still refused by the same expansion check, and a padded deep one (5,000 brackets on
    one line) goes to the bounded pure-Python path, which refuses it."""
    from relsafe import utils_io

    pad = "".join(f"# padding line {i:05d} to make the file long\n" for i in range(500))
    assert len(pad) > utils_io._FAST_YAML_BYTES
    if getattr(yaml, "__with_libyaml__", False):
        assert utils_io._fast_loader(pad + BOMB) is not None
    assert utils_io._fast_loader(pad + DEEP) is None
    for text, match in ((pad + BOMB, "alias"), (pad + DEEP, "nested deeper")):
        with pytest.raises(ConfigError, match=match):
            load_policy(_w(tmp_path, "p.yaml", text))


@pytest.mark.parametrize("text, match", [(BOMB, "alias"), (DEEP, "nested deeper")])
def test_config_bomb_and_deep_nesting_are_refused(tmp_path: Path, text: str, match: str):
    p = _w(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError, match=match) as ei:
        load_yaml(p)
    assert str(p) in str(ei.value)


def test_policy_errors_keep_their_line_numbers(tmp_path: Path):
    p = _w(
        tmp_path, "p.yaml", "name: x\nunsafe:\n  - child|drinking|wine\n  - chlid|drinking|beer\n"
    )
    with pytest.raises(ConfigError, match=r"line 4 \(unsafe\[1\]\).*'child'"):
        load_policy(p)


def test_policy_control_character_names_the_line(tmp_path: Path):
    p = _w(tmp_path, "p.yaml", "name: x\nunsafe: [child|drinking|wine]\ndescription: a\x07\n")
    with pytest.raises(ConfigError, match=r"p.yaml, line 3: character '\\x07'"):
        load_policy(p)


def test_recursive_alias_in_a_config_is_refused(tmp_path: Path):
    p = _w(tmp_path, "c.yaml", "model: relsafe-mini\nmethods: &m [*m]\n")
    with pytest.raises(ConfigError, match="contains it"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="contains it"):
        apply_overrides({}, ["x=&a {k: *a}"])


def test_override_value_alias_bomb_is_refused():
    bomb = "[&a [x,x,x,x,x,x,x,x,x], " + ", ".join(
        f"&{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    with pytest.raises(ConfigError, match="alias"):
        apply_overrides({}, [f"methods={bomb}, *h]"])


def test_vocabulary_file_bomb_and_non_utf8(tmp_path: Path):
    from relsafe.world.vocab import Vocabulary

    with pytest.raises(ConfigError, match="alias"):
        Vocabulary.from_yaml(_w(tmp_path, "v.yaml", BOMB))
    with pytest.raises(ConfigError, match="not UTF-8"):
        Vocabulary.from_yaml(_w(tmp_path, "w.yaml", b"subjects: [caf\xe9]\n"))


# ---- finding 7: non-UTF-8 files, --set paths, JSON of the wrong shape ------------------------------
def test_non_utf8_config_and_policy_name_the_file(tmp_path: Path):
    p = _w(tmp_path, "c.yaml", b"model: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not UTF-8"):
        load_yaml(p)
    q = _w(tmp_path, "p.yaml", b"name: caf\xe9\nunsafe: [child|drinking|wine]\n")
    with pytest.raises(ConfigError, match=r"p.yaml is not UTF-8"):
        load_policy(q)


def test_non_utf8_texts_file(tmp_path: Path):
    from relsafe.cli import _read_lines

    with pytest.raises(InputError, match=r"t.txt is not UTF-8"):
        _read_lines(_w(tmp_path, "t.txt", b"caf\xe9\n"), "--texts file")


@pytest.mark.parametrize(
    "item, match",
    [
        ("methods.5.name=x", r"'methods.5.name=x'.*out of range.*1 item"),
        ("methods.-1.name=x", r"'methods.-1.name=x'.*out of range"),
        ("methods.0.name.x=1", r"goes through 'methods.0.name'"),
        ("model.x=1", r"goes through 'model'"),
        ("methods..name=1", "empty part"),
        ("methods.first.name=1", "non-integer 'first'"),
    ],
)
def test_bad_override_paths_name_the_override(item: str, match: str):
    data = {"model": "relsafe-mini", "methods": [{"name": "uwm"}]}
    with pytest.raises(ConfigError, match=match):
        apply_overrides(data, [item])
    assert data == {"model": "relsafe-mini", "methods": [{"name": "uwm"}]}


def test_good_override_paths_still_work():
    data = {"methods": [{"name": "uwm"}, {"name": "hysac"}]}
    apply_overrides(data, ["methods.1.name=safeclip", "suites.relational.n_per_tuple=4"])
    assert data == {
        "methods": [{"name": "uwm"}, {"name": "safeclip"}],
        "suites": {"relational": {"n_per_tuple": 4}},
    }


def test_config_file_that_is_a_list(tmp_path: Path):
    @dataclasses.dataclass
    class C:
        a: int = 1

    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(C, _w(tmp_path, "c.yaml", "- a\n- b\n"))


def test_config_with_mixed_type_keys_is_a_config_error():
    @dataclasses.dataclass
    class C:
        a: int = 1

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \[1, 'b'\]"):
        from_dict(C, {1: 2, "b": 3})


@pytest.mark.parametrize(
    "content", ["[1, 2]", b'{"format": "caf\xe9"}', '{"format": ', "[" * 100_000 + "]" * 100_000]
)
def test_checkpoint_state_json_bad(tmp_path: Path, content: str | bytes):
    from relsafe.checkpoints import STATE_FILE, _read_state

    _w(tmp_path, STATE_FILE, content)
    with pytest.raises(CheckpointError, match=STATE_FILE):
        _read_state(tmp_path)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ("[1]", "top level"),
        ('{"r": 8}', "'lora_alpha'"),
        ('{"r": "8", "lora_alpha": 8, "target_modules": ["q"]}', "'r' must be"),
        ('{"r": 8, "lora_alpha": 8, "target_modules": []}', "'target_modules'"),
        (b'{"r": 8, "x": "caf\xe9"}', "not UTF-8"),
    ],
)
def test_adapter_config_json_bad(tmp_path: Path, cfg: str | bytes, match: str):
    from relsafe.methods.lora import load_adapter

    _w(tmp_path, "adapter_config.json", cfg)
    _w(tmp_path, "adapter_model.safetensors", b"")
    with pytest.raises(InputError, match=match) as ei:
        load_adapter(None, tmp_path)  # type: ignore[arg-type]  # fails before the model is used
    assert "adapter_config.json" in str(ei.value)


def test_results_file_non_utf8_and_sidecar_list(tmp_path: Path):
    from relsafe.eval.rows import read_provenance, read_rows, sidecar_path

    bad = _w(tmp_path, "bad.jsonl", b'{"suite": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: not UTF-8"):
        read_rows(bad)
    ok = _w(tmp_path, "ok.jsonl", "")
    sidecar_path(ok).write_text("[1, 2]")
    with pytest.raises(InputError, match="top level must be an object"):
        read_provenance(ok)


def test_visu_jsonl_non_utf8(tmp_path: Path):
    from relsafe.data.visu import _records

    p = _w(tmp_path, "v.jsonl", b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"v.jsonl, line 2: malformed JSON"):
        list(_records(p, None))


def test_cli_prints_control_characters_escaped(tmp_path: Path, capsys):
    from relsafe.cli import main

    p = _w(tmp_path, "p\x1b[31m.yaml", "unsafe: [chlid|drinking|wine]\n")
    assert main(["policy", str(p)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31m" in err
    assert err.count("\n") == 1


# ---- property tests ---------------------------------------------------------------------------------
WORDS = st.sampled_from(
    ["child", "drinking", "wine", "beer", "chlid", "on", "table", "", " ", "|", "a|b", "x" * 50]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), WORDS, st.text(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(WORDS, st.integers()), kids, max_size=4),
    ),
    max_leaves=20,
)
POLICY_KEYS = st.sampled_from(
    ["name", "description", "unsafe", "counterpart_strategy", "tuple", "counterpart", "bogus"]
)
POLICY_DOCS = st.dictionaries(
    POLICY_KEYS,
    st.one_of(
        VALUES,
        st.lists(st.one_of(st.builds("|".join, st.lists(WORDS, max_size=4)), VALUES), max_size=4),
    ),
    max_size=5,
)
YAMLISH = st.builds(
    "".join,
    st.lists(
        st.sampled_from(
            list("ab|:-[]{}&*!#'\"\n\t ,?%@`\x07\x00é")
            + ["unsafe:", "&a", "*a", "child|drinking|wine", "!!python/name:os.system"]
        ),
        max_size=30,
    ),
)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(text=YAMLISH)
def test_property_yamlish_policy_text(tmp_path: Path, text: str):
    p = tmp_path / "gen.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_policy(p)
    except RelsafeError as e:
        assert "gen.yaml" in str(e)


@FAST
@given(doc=POLICY_DOCS)
def test_property_policy_documents(doc: dict):
    try:
        Policy.from_dict(doc, source="<generated>")
    except RelsafeError as e:
        assert "<generated>" in str(e) or "unknown" in str(e)


@FAST
@given(doc=POLICY_DOCS)
def test_property_policy_documents_as_yaml_files(tmp_path: Path, doc: dict):
    p = tmp_path / "doc.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        load_policy(p)
    except RelsafeError as e:
        assert "doc.yaml" in str(e)


@dataclasses.dataclass
class _Inner:
    lr: float = 1e-3
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Cfg:
    steps: int = 1
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    out: Path | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    items: list[_Inner] = dataclasses.field(default_factory=list)
    extra: dict[str, int] = dataclasses.field(default_factory=dict)
    pair: tuple[int, int] = (1, 2)


CFG_KEYS = st.sampled_from(
    ["steps", "name", "mode", "out", "inner", "items", "extra", "pair", "lr", "tags", "bogus"]
)
CFG_DOCS = st.recursive(
    SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(CFG_KEYS, kids, max_size=4)),
    max_leaves=15,
)


@FAST
@given(doc=st.dictionaries(CFG_KEYS, CFG_DOCS, max_size=5))
def test_property_config_mappings(doc: dict):
    try:
        from_dict(_Cfg, doc, "gen.yaml")
    except ConfigError as e:
        assert "gen.yaml" in str(e)


OVERRIDE = st.builds(
    lambda k, sep, v: f"{k}{sep}{v}",
    st.builds(".".join, st.lists(st.one_of(CFG_KEYS, st.sampled_from(["0", "1", "-1", "9", ""])))),
    st.sampled_from(["=", "", "=="]),
    st.one_of(YAMLISH, st.sampled_from(["1", "[1, 2]", "{lr: 2}", "&a [*a]", "null", "nan"])),
)


@FAST
@given(items=st.lists(OVERRIDE, max_size=3))
def test_property_set_overrides(items: list[str]):
    data = {"steps": 2, "inner": {"lr": 0.1, "tags": ["a"]}, "items": [{"lr": 1.0}]}
    try:
        from_dict(_Cfg, apply_overrides(data, items), "gen.yaml")
    except ConfigError as e:
        msg = str(e)
        assert "--set" in msg or "gen.yaml" in msg
