"""ViSU quadruplets (S, V, U, G) from files, or from RelWorld, as one :class:`VisuData` structure.

Longer than 500 lines because the one record reader handles five file formats, their field
aliases, COCO ids and image checks together; splitting them would spread one format's rules
over several modules.

ViSU (Safe-CLIP, arXiv 2311.16254) pairs a safe COCO caption S and its COCO image V with an unsafe
caption U and an unsafe image G. The public ViSU-Text release has the texts only (fields ``safe``,
``nsfw``, ``tag``, plus COCO ids); images are supplied locally, as paths or via a COCO folder.

Accepted files (:func:`load_visu`):

* ``.json``: a list of records, ``{"data": [...]}`` or ``{"<id>": record, ...}``;
* ``.jsonl``: one record per line;
* ``.csv``: a header row and one record per row;
* ``.parquet``: needs ``pyarrow`` (or ``pandas``), imported only then;
* a folder written by Hugging Face ``datasets`` (``save_to_disk``): needs ``datasets``; a
  ``DatasetDict`` needs ``split=``.

Field names (first alias present wins; case-sensitive):

* safe text S: ``safe``, ``safe_text``, ``safe_caption``, ``S`` (required)
* unsafe text U: ``nsfw``, ``unsafe``, ``unsafe_text``, ``nsfw_text``, ``nsfw_caption``,
  ``unsafe_caption``, ``U`` (required)
* tag: ``tag``, ``category``, ``concept``, ``nsfw_tag`` (optional, default ``"untagged"``)
* safe image V: ``safe_image``, ``safe_image_path``, ``safe_img``, ``image``, ``image_path``,
  ``V``; or a COCO id ``coco_id``, ``image_id``, ``coco_image_id``, ``cocoid`` resolved under
  ``coco_root``
* unsafe image G: ``nsfw_image``, ``unsafe_image``, ``nsfw_image_path``, ``unsafe_image_path``,
  ``nsfw_img``, ``G``

Relative image paths are resolved against ``image_root`` (default: the file's folder). Image
values may also be PIL images (``datasets`` Image columns). Missing and corrupt images become
``None`` and are counted (:meth:`VisuData.summary`); text-only use still works.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.errors import InputError
from relsafe.utils_io import read_json_file

__all__ = [
    "COCO_ID_FIELDS",
    "SAFE_IMAGE_FIELDS",
    "SAFE_TEXT_FIELDS",
    "TAG_FIELDS",
    "UNSAFE_IMAGE_FIELDS",
    "UNSAFE_TEXT_FIELDS",
    "VisuData",
    "load_visu",
]

SAFE_TEXT_FIELDS = ("safe", "safe_text", "safe_caption", "S")
UNSAFE_TEXT_FIELDS = (
    "nsfw",
    "unsafe",
    "unsafe_text",
    "nsfw_text",
    "nsfw_caption",
    "unsafe_caption",
    "U",
)
TAG_FIELDS = ("tag", "category", "concept", "nsfw_tag")
SAFE_IMAGE_FIELDS = ("safe_image", "safe_image_path", "safe_img", "image", "image_path", "V")
UNSAFE_IMAGE_FIELDS = (
    "nsfw_image",
    "unsafe_image",
    "nsfw_image_path",
    "unsafe_image_path",
    "nsfw_img",
    "G",
)
COCO_ID_FIELDS = ("coco_id", "image_id", "coco_image_id", "cocoid")
DEFAULT_TAG = "untagged"

# COCO file layouts tried for an id, relative to coco_root.
_COCO_PATTERNS = (
    "{id:012d}.jpg",
    "train2017/{id:012d}.jpg",
    "val2017/{id:012d}.jpg",
    "train2014/COCO_train2014_{id:012d}.jpg",
    "val2014/COCO_val2014_{id:012d}.jpg",
    "images/{id:012d}.jpg",
)


@dataclass
class VisuData:
    """Aligned quadruplets: ``S[i]``, ``V[i]``, ``U[i]``, ``G[i]`` and ``tags[i]`` belong together.

    ``V`` / ``G`` hold PIL images or file paths, with ``None`` where an image is missing or
    corrupt; the whole list is ``None`` when the source gives no images of that kind.
    ``image_problems`` counts ``{"V": {"missing": n, "corrupt": n}, "G": {...}}`` and ``problems``
    keeps the first messages. ``safe_tags`` (RelWorld only, else None) are the safe tuple ids of
    S/V, as ``tags`` are the unsafe tuple ids of U/G there: items that show the same content.
    """

    S: list[str]
    U: list[str]
    V: list[Any] | None
    G: list[Any] | None
    tags: list[str]
    source: str = "<memory>"
    image_problems: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    safe_tags: list[str] | None = None
    splits: list[str | None] | None = None  # per row: train / val / test (a `split` field)

    def __post_init__(self) -> None:
        n = len(self.S)
        for name in ("U", "tags", "safe_tags", "splits"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise InputError(
                    f"VisuData: {name} has {len(getattr(self, name))} items, S has {n}"
                )
        for name in ("V", "G"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise InputError(f"VisuData: {name} has {len(v)} items, S has {n}")

    def __len__(self) -> int:
        return len(self.S)

    def split_rows(self, split: str) -> list[int]:
        """Indices of the rows of ``split`` (``train``, ``val`` or ``test``); refused when the
        file has no ``split`` field (its rows could not be kept apart between training and
        evaluation) or some rows lack one."""
        if self.splits is None or any(x is None for x in self.splits):
            raise InputError(
                f"{self.source}: a ViSU file used for training and evaluation needs a `split` "
                "field (train, val or test) on every row, so no test row is trained on"
            )
        return [i for i, x in enumerate(self.splits) if x == split]

    def valid(self, kinds: str = "") -> list[int]:
        """Indices of the items whose images of each kind in ``kinds`` (e.g. ``"VG"``) exist."""
        out = []
        for i in range(len(self)):
            ok = True
            for k in kinds:
                if k not in ("V", "G"):
                    raise InputError(f"image kind must be 'V' or 'G', got {k!r}")
                imgs = self.V if k == "V" else self.G
                if imgs is None or imgs[i] is None:
                    ok = False
                    break
            if ok:
                out.append(i)
        return out

    def subset(self, indices: Sequence[int]) -> VisuData:
        """A new :class:`VisuData` with the given items, in order."""
        idx = list(indices)
        return VisuData(
            S=[self.S[i] for i in idx],
            U=[self.U[i] for i in idx],
            V=None if self.V is None else [self.V[i] for i in idx],
            G=None if self.G is None else [self.G[i] for i in idx],
            tags=[self.tags[i] for i in idx],
            source=self.source,
            safe_tags=None if self.safe_tags is None else [self.safe_tags[i] for i in idx],
            splits=None if self.splits is None else [self.splits[i] for i in idx],
        )

    def as_dict(self) -> dict[str, Any]:
        """``{"S", "U", "V", "G"}``: the calibration/training data form methods accept."""
        return {"S": self.S, "U": self.U, "V": self.V, "G": self.G, "source": self.source}

    def summary(self) -> str:
        """One line: items, tags and, per image kind, how many were found, missing, corrupt."""
        parts = [f"{self.source}: {len(self)} quadruplets, {len(set(self.tags))} tags"]
        for k, label in (("V", "safe images"), ("G", "unsafe images")):
            imgs = getattr(self, k)
            if imgs is None:
                parts.append(f"{label}: none given")
                continue
            found = sum(x is not None for x in imgs)
            prob = self.image_problems.get(k, {})
            parts.append(
                f"{label}: {found} found, {prob.get('missing', 0)} missing, "
                f"{prob.get('corrupt', 0)} corrupt"
            )
        return "; ".join(parts)

    @classmethod
    def from_relworld(
        cls,
        policy: Any,
        n_per_pair: int,
        split_seed: int | None = None,
        *,
        size: int = 64,
        styles: Sequence[str] | None = None,
        caption_split: str = "eval",
    ) -> VisuData:
        """RelWorld quadruplets of ``policy``'s (unsafe, counterpart) pairs, images in memory.

        Args:
            policy: a :class:`relsafe.policy.Policy`.
            n_per_pair: quadruplets per pair.
            split_seed: the base seed (default ``splits.TEST``; methods pass ``splits.EDIT + seed``).
            size: image side. styles: default the training styles. caption_split: ``"eval"``
                (the default, for evaluation data: the canonical template no method trains on),
                ``"edit"`` (training material) or ``"heldout"``.

        ``tags`` are the unsafe tuple ids (``child|drinking|wine``), ``safe_tags`` the safe ones
        (``child|drinking|juice``). Built by :func:`relsafe.data.quadruplets.build_quadruplets`.
        """
        from relsafe.data.quadruplets import build_quadruplets
        from relsafe.world import splits

        seed = splits.TEST if split_seed is None else int(split_seed)
        q = build_quadruplets(
            policy, n_per_pair, seed, size=size, styles=styles, caption_split=caption_split
        )
        return cls(
            S=q.S,
            U=q.U,
            V=q.V,
            G=q.G,
            tags=q.unsafe_ids,
            source=q.source,
            safe_tags=q.safe_ids,
        )


# ---------------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------------


def _records(path: Path, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, record)``; location names the line / row / record for errors."""
    if path.is_dir():
        yield from _hf_records(path, split)
        return
    if not path.is_file():
        raise InputError(f"ViSU file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_records(path)
        return
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, too deep
                    why = getattr(e, "msg", None) or e or "nested too deeply"
                    raise InputError(f"{path}, line {lineno}: malformed JSON ({why})") from e
                if not isinstance(obj, dict):
                    raise InputError(
                        f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}"
                    )
                yield f"{path}, line {lineno}", obj
        return
    if suffix == ".json":
        obj = read_json_file(path, "ViSU file", expect=None)
        items: Iterable[tuple[str, Any]]
        if isinstance(obj, list):
            items = ((f"{path}, record #{i}", r) for i, r in enumerate(obj))
        elif isinstance(obj, dict) and isinstance(obj.get("data"), list):
            items = ((f"{path}, data[{i}]", r) for i, r in enumerate(obj["data"]))
        elif isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
            items = ((f"{path}, record {k!r}", r) for k, r in obj.items())
        else:
            raise InputError(
                f"{path}: expected a list of records, {{'data': [...]}} or {{id: record}}, "
                f"got {type(obj).__name__}"
            )
        for where, r in items:
            if not isinstance(r, dict):
                raise InputError(f"{where}: expected an object, got {type(r).__name__}")
            yield where, r
        return
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise InputError(f"{path}: the CSV file has no header row")
            for row in reader:
                yield f"{path}, line {reader.line_num}", dict(row)
        return
    raise InputError(
        f"{path}: unsupported ViSU file type {suffix!r}; use .json, .jsonl, .csv, .parquet or a "
        "Hugging Face datasets folder"
    )


def _parquet_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if pq is not None:
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InputError(f"{path}: unreadable Parquet file ({e})") from e
    else:
        try:
            import pandas as pd
        except ImportError as e:
            raise InputError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow) or pandas with a "
                "Parquet engine; neither is installed"
            ) from e
        try:
            rows = pd.read_parquet(path).to_dict(orient="records")
        except ImportError as e:
            raise InputError(f"{path}: pandas has no Parquet engine ({e})") from e
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: unreadable Parquet file ({e})") from e
    if not rows:
        raise InputError(f"{path}: the Parquet file has no rows")
    for i, r in enumerate(rows):
        yield f"{path}, row #{i}", r


def _hf_records(path: Path, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as e:
        raise InputError(
            f"{path} is a folder: reading a Hugging Face datasets folder needs `datasets` "
            "(pip install datasets)"
        ) from e
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises several types
        raise InputError(f"{path}: not a Hugging Face datasets folder ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise InputError(f"{path} holds splits {sorted(ds)}; choose one with split=")
            split = next(iter(ds))
        if split not in ds:
            raise InputError(f"{path} has no split {split!r}; it has {sorted(ds)}")
        ds = ds[split]
    for i, r in enumerate(ds):
        yield f"{path}, row #{i}", dict(r)


def _first(record: dict[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    for n in names:
        if n in record and record[n] is not None and record[n] != "":
            return n, record[n]
    return None, None


def _coco_path(coco_root: Path, value: Any, where: str) -> Path | None:
    try:
        cid = int(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: COCO id {value!r} is not an integer") from e
    for pat in _COCO_PATTERNS:
        p = coco_root / pat.format(id=cid)
        if p.is_file():
            return p
    return None


def _check_image(path: Path) -> str | None:
    """None when ``path`` is a readable image, else ``"missing"`` or ``"corrupt"``."""
    if not path.is_file():
        return "missing"
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
        return "corrupt"
    return None


def load_visu(
    path: str | os.PathLike[str],
    *,
    coco_root: str | os.PathLike[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    verify_images: bool = True,
    limit: int | None = None,
) -> VisuData:
    """Load ViSU quadruplets from a JSON / JSONL / CSV / Parquet file or a ``datasets`` folder.

    Args:
        path: the file or folder (see the module docs for formats and field aliases).
        coco_root: COCO image folder for records that give a COCO id instead of a safe image.
        image_root: base for relative image paths (default: the file's folder).
        split: the split of a ``DatasetDict`` folder.
        verify_images: open every image file once (PIL ``verify``) to count corrupt ones.
        limit: keep only the first ``limit`` records.

    Raises:
        InputError: empty file, malformed record, or a record without a required field (naming the
        field and the line / record).
    """
    path = Path(path)
    base = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    croot = Path(coco_root).resolve() if coco_root is not None else None
    S: list[str] = []
    U: list[str] = []
    tags: list[str] = []
    V: list[Any] = []
    G: list[Any] = []
    row_splits: list[str | None] = []
    any_v = any_g = False
    problems: list[str] = []
    counts = {"V": {"missing": 0, "corrupt": 0}, "G": {"missing": 0, "corrupt": 0}}

    def image(kind: str, value: Any, where: str, field_name: str) -> Any:
        from PIL import Image

        if isinstance(value, Image.Image):
            return value
        if isinstance(value, dict) and "path" in value:  # datasets Image without decoding
            value = value["path"]
        if not isinstance(value, str | os.PathLike):
            raise InputError(
                f"{where}: field {field_name!r} must be an image path, got {type(value).__name__}"
            )
        p = Path(value)
        p = p if p.is_absolute() else base / p
        problem = _check_image(p) if verify_images else (None if p.is_file() else "missing")
        if problem is not None:
            counts[kind][problem] += 1
            if len(problems) < 10:
                problems.append(f"{where}: {kind} image {str(p)!r} is {problem}")
            return None
        return p

    for n_rec, (where, rec) in enumerate(_records(path, split)):
        if limit is not None and n_rec >= limit:
            break
        s_name, s_val = _first(rec, SAFE_TEXT_FIELDS)
        u_name, u_val = _first(rec, UNSAFE_TEXT_FIELDS)
        for name, val, aliases in (
            (s_name, s_val, SAFE_TEXT_FIELDS),
            (u_name, u_val, UNSAFE_TEXT_FIELDS),
        ):
            if name is None:
                raise InputError(
                    f"{where}: missing field {aliases[0]!r} (or one of {list(aliases[1:])}); "
                    f"the record has {sorted(rec)}"
                )
            if not isinstance(val, str):
                raise InputError(f"{where}: field {name!r} must be text, got {type(val).__name__}")
        _, tag = _first(rec, TAG_FIELDS)
        row_split = rec.get("split")
        if row_split is not None and row_split not in ("train", "val", "test"):
            raise InputError(f"{where}: split must be train, val or test, got {row_split!r}")
        row_splits.append(row_split)
        S.append(s_val)
        U.append(u_val)
        tags.append(str(tag) if tag is not None else DEFAULT_TAG)
        v_name, v_val = _first(rec, SAFE_IMAGE_FIELDS)
        if v_name is not None:
            any_v = True
            V.append(image("V", v_val, where, v_name))
        else:
            c_name, c_val = _first(rec, COCO_ID_FIELDS)
            if c_name is not None:
                any_v = True
                if croot is None:
                    counts["V"]["missing"] += 1
                    if len(problems) < 10:
                        problems.append(f"{where}: COCO id {c_val} but no coco_root given")
                    V.append(None)
                else:
                    p = _coco_path(croot, c_val, where)
                    if p is None:
                        counts["V"]["missing"] += 1
                        if len(problems) < 10:
                            problems.append(f"{where}: COCO image {c_val} not under {croot}")
                        V.append(None)
                    else:
                        V.append(image("V", p, where, c_name))
            else:
                V.append(None)
        g_name, g_val = _first(rec, UNSAFE_IMAGE_FIELDS)
        if g_name is not None:
            any_g = True
            G.append(image("G", g_val, where, g_name))
        else:
            G.append(None)
    if not S:
        raise InputError(f"{path}: no ViSU records found")
    # records that name no image of a kind count as missing when others do
    for kind, lst, any_ in (("V", V, any_v), ("G", G, any_g)):
        if any_:
            given = counts[kind]["missing"] + counts[kind]["corrupt"]
            counts[kind]["missing"] += sum(x is None for x in lst) - given
    data = VisuData(
        S=S,
        U=U,
        V=V if any_v else None,
        G=G if any_g else None,
        tags=tags,
        source=str(path),
        image_problems={
            k: v for k, v in counts.items() if (k == "V" and any_v) or (k == "G" and any_g)
        },
        problems=problems,
        splits=row_splits if any(x is not None for x in row_splits) else None,
    )
    return data
