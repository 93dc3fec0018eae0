"""Hostile inputs: YAML policies and configs, ``--set`` overrides, text files and the JSON files of
run and edit folders (issue 17, findings 1 and 7).

Every YAML the project reads goes through one bounded loader, so an alias bomb or a 5,000-deep
nesting is a clean error wherever it is given: a policy, ``edit --policy``, ``policy:`` in a run
config, a ``--config`` file or a ``--set`` value.
"""

from __future__ import annotations

import json
from pathlib import Path

from hostile import Case

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
"""A ~400-byte billion-laughs document: 9**9 values once expanded."""

DEEP_LIST = "unsafe: " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_MAP = "{a: " * 5000 + "1" + "}" * 5000 + "\n"
TINY = "name: tiny\nunsafe:\n  - child|drinking|wine\n  - child|drinking|beer\n"


def _w(tmp: Path, name: str, data: str | bytes) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data, encoding="utf-8")
    return p


def _run_folder(tmp: Path, name: str, **files: str | bytes) -> Path:
    """A minimal ``relsafe run`` output folder (one good results row) plus ``files``."""
    folder = tmp / name
    row = {
        "suite": "zeroshot",
        "method": "original",
        "model": "relsafe-mini",
        "slice": "all",
        "attack": "none",
        "metric": "top1",
        "value": 0.5,
        "n": 10,
    }
    _w(folder, "results.jsonl", json.dumps(row) + "\n")
    for rel, data in files.items():
        _w(folder, rel.replace("__", "/"), data)
    return folder


def cases(tmp: Path) -> list[Case]:
    t = tmp
    bomb = _w(t, "bomb.yaml", BOMB)
    deep = _w(t, "deep.yaml", DEEP_LIST)
    tiny = _w(t, "tiny.yaml", TINY)
    latin = b"name: caf\xe9\nunsafe: [child|drinking|wine]\n"
    out: list[Case] = []

    # ---- policies: relsafe policy FILE ----------------------------------------------------------
    pol = {
        "alias-bomb": BOMB,
        "deep-list": DEEP_LIST,
        "deep-map": DEEP_MAP,
        "recursive-alias": "unsafe: &a [*a]\n",
        "recursive-alias-map": "name: &n {x: *n}\nunsafe: [child|drinking|wine]\n",
        "latin1": latin,
        "utf16": TINY.encode("utf-16"),
        "binary": bytes(range(256)) * 4,
        "nul-bytes": b"name: x\x00y\nunsafe: [child|drinking|wine]\n",
        "control-char": "name: a\x07b\nunsafe: [child|drinking|wine]\n",
        "empty": "",
        "top-list": "- child|drinking|wine\n",
        "top-scalar": "42\n",
        "unknown-word": "unsafe: [chlid|drinking|wine]\n",
        "unsafe-mapping": "unsafe: {a: b}\n",
        "unsafe-nested": "unsafe: [[[child, drinking, wine]]]\n",
        "duplicate-key": "unsafe: [child|drinking|wine]\nunsafe: [child|drinking|beer]\n",
        "python-tag": "unsafe: !!python/object/apply:os.system ['true']\n",
        "mixed-keys": "1: a\nname: x\nunsafe: [child|drinking|wine]\n",
        "list-key": "[a, b]: 1\nunsafe: [child|drinking|wine]\n",
        "unclosed": "unsafe: [child|drinking|wine\n",
        "tuple-int-words": "unsafe: [[1, 2, 3]]\n",
        "binary-tag": "unsafe: [!!binary aGVsbG8=]\n",
    }
    for name, text in pol.items():
        p = _w(t, f"policy_{name}.yaml", text)
        out.append(Case(f"policy:{name}", ["policy", str(p)]))
    out.append(Case("policy:folder", ["policy", str(t)]))
    out.append(Case("policy:missing", ["policy", str(t / "nope.yaml")]))
    out.append(Case("policy:good", ["policy", str(tiny)], expect="ok"))

    # ---- edit --policy / --config / --set: refused before any model is loaded --------------------
    keep = t / "edit_keep"
    _w(keep, "record.json", '{"method": "uwm"}\n')
    edit = ["edit", "--method", "uwm", "--out", str(keep)]
    out.append(Case("edit:policy-bomb", [*edit, "--policy", str(bomb)], keep=[keep]))
    out.append(Case("edit:policy-deep", [*edit, "--policy", str(deep)], keep=[keep]))
    out.append(Case("edit:config-bomb", [*edit, "--config", str(bomb)], keep=[keep]))
    cfg_latin = _w(t, "cfg_latin.yaml", b"steps: 3 # caf\xe9\n")
    out.append(Case("edit:config-latin1", [*edit, "--config", str(cfg_latin)], keep=[keep]))
    out.append(Case("edit:set-through-scalar", [*edit, "--set", "steps.x=1"], keep=[keep]))
    out.append(Case("edit:set-value-bomb", [*edit, "--set", "steps=" + _flow_bomb()], keep=[keep]))

    # ---- run configs: the file, its policy: and --set --------------------------------------------
    run_out = t / "run_out"
    base = "model: relsafe-mini\npolicy: tiny\nmethods:\n  - name: uwm\n    config: {}\n"
    good = _w(t, "run_good.yaml", base)
    run_cfgs = {
        "config-bomb": BOMB,
        "config-latin1": b"model: relsafe-mini # caf\xe9\n",
        "config-list": "- model\n- relsafe-mini\n",
        "config-recursive": "model: relsafe-mini\nmethods: &m [*m]\n",
        "policy-bomb": f"model: relsafe-mini\npolicy: {bomb}\n",
        "policy-deep": f"model: relsafe-mini\npolicy: {deep}\n",
        "policy-latin1": f"model: relsafe-mini\npolicy: {_w(t, 'pl.yaml', latin)}\n",
    }
    for name, text in run_cfgs.items():
        p = _w(t, f"run_{name}.yaml", text)
        out.append(Case(f"run:{name}", ["run", str(p), "--out", str(run_out)]))
    bad_sets = {
        "index-past-end": "methods.5.name=x",
        "index-negative": "methods.-1.name=x",
        "through-scalar": "model.x=1",
        "empty-part": "suites..n=1",
        "no-equals": "model",
        "unclosed-value": "model=[relsafe-mini",
        "recursive-value": "methods=&a [*a]",
        "bomb-value": "methods=" + _flow_bomb(),
    }
    for name, item in bad_sets.items():
        argv = ["run", str(good), "--out", str(run_out), "--set", item]
        out.append(Case(f"run:set-{name}", argv))

    # ---- eval / pretrain --config ---------------------------------------------------------------
    out.append(Case("eval:config-bomb", ["eval", "--suite", "zeroshot", "--config", str(bomb)]))
    out.append(Case("pretrain:config-bomb", ["pretrain", "--config", str(bomb)]))

    # ---- text files: embed --texts, --images manifests -------------------------------------------
    emb = t / "emb.safetensors"
    texts_latin = _w(t, "texts_latin.txt", b"a caf\xe9\nsecond line\n")
    texts_empty = _w(t, "texts_empty.txt", "\n\n  \n")
    manifest = _w(t, "manifest_latin.txt", b"caf\xe9.png\n")
    for name, p in [("latin1", texts_latin), ("blank", texts_empty)]:
        out.append(Case(f"embed:texts-{name}", ["embed", "--texts", str(p), "--out", str(emb)]))
    out.append(Case("embed:texts-folder", ["embed", "--texts", str(t), "--out", str(emb)]))
    out.append(
        Case("embed:manifest-latin1", ["embed", "--images", str(manifest), "--out", str(emb)])
    )

    # ---- the JSON of run folders: relsafe report -------------------------------------------------
    rep = {
        "results-latin1": {"results.jsonl": b'{"suite": "caf\xe9"}\n'},
        "results-list-line": {"results.jsonl": "[1, 2]\n"},
        "results-deep-line": {"results.jsonl": "[" * 100_000 + "]" * 100_000 + "\n"},
        "record-list": {"models__uwm__record.json": "[1, 2, 3]\n"},
        "record-latin1": {"models__uwm__record.json": b'{"method": "caf\xe9"}'},
        "timings-malformed": {"timings.json": '{"stages": '},
        "provenance-list": {"provenance.json": "[]"},
        "examples-string": {"rows__original__examples.json": '"items"'},
    }
    for name, files in rep.items():
        folder = _run_folder(t, f"runf_{name}", **files)
        out.append(Case(f"report:{name}", ["report", str(folder)], keep=[folder / "results.jsonl"]))
    return out


def _flow_bomb() -> str:
    """A one-line alias bomb for ``--set key=VALUE``."""
    parts = ["[&a [x,x,x,x,x,x,x,x,x]"]
    prev = "a"
    for c in "bcdefgh":
        parts.append(f"&{c} [{','.join([f'*{prev}'] * 9)}]")
        prev = c
    return ", ".join(parts) + f", *{prev}]"
