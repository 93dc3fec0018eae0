"""Resolving what a user names (model specs, policies, configs) into loaded objects, and the
provenance of what was read. Every command goes through these, so an edit's output folder is a
model spec everywhere and every results file hashes the same files."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relsafe.config import from_dict, load_config
from relsafe.errors import CheckpointError, ConfigError

T = TypeVar("T")

EDIT_RECORD = "record.json"
EDIT_MODEL = "merged"


def resolve_model_spec(spec: str) -> str:
    """``spec`` as the model registry understands it: the folder ``relsafe edit --out`` wrote
    (``record.json`` + ``merged/``) resolves to its merged model; anything else is unchanged."""
    if not isinstance(spec, str):
        return spec
    path = Path(spec).expanduser()
    if path.is_dir() and (path / EDIT_RECORD).is_file() and not (path / "config.json").exists():
        merged = path / EDIT_MODEL
        if not merged.is_dir():
            raise CheckpointError(
                f"{path} is an edit output folder (it has {EDIT_RECORD}) but has no {EDIT_MODEL}/ "
                "model; was it written by an interrupted relsafe edit?"
            )
        return str(merged)
    return spec


def load_model(spec: str, **kwargs: Any) -> Any:
    """Load a model from a spec (``relsafe-mini``, ``hf:<id>``, a model folder or an edit output
    folder); see :func:`relsafe.models.registry.load_model` for the rest."""
    from relsafe.models.registry import load_model as _load

    return _load(resolve_model_spec(spec), **kwargs)


def load_policy(policy: Any, world: Any = None) -> Any:
    """A :class:`~relsafe.policy.Policy` from a path or bundled name (a Policy passes through),
    bound to ``world`` when given: a :class:`relsafe.data.world.World`, ``"relworld"``, a
    manifest path (the policy's vocabulary with that manifest's images) or a run config's
    ``{vocabulary: ..., data: ...}`` mapping."""
    from relsafe.policy import Policy
    from relsafe.policy import load_policy as _load

    if policy is not None and not isinstance(policy, Policy):
        policy = _load(policy)
    if world is None or policy is None:
        return policy
    from relsafe.data.world import World
    from relsafe.data.world_spec import open_world

    if not isinstance(world, World):
        spec = world if isinstance(world, Mapping) or world == "relworld" else {"data": world}
        world = open_world(dict(spec) if isinstance(spec, Mapping) else spec, policy.vocabulary)
    return policy.bind_world(world)


def build_config(
    cls: type[T],
    config: T | Mapping[str, Any] | str | Path | None = None,
    overrides: Sequence[str] = (),
    where: str = "config",
) -> T:
    """A validated ``cls`` from an instance, a mapping, or a YAML path, plus ``--set`` overrides."""
    if isinstance(config, cls):
        if overrides:
            from relsafe.config import apply_overrides, to_dict

            data = apply_overrides(to_dict(config), overrides)
            return from_dict(cls, data, where)
        return config
    if config is None or isinstance(config, str | Path):
        return load_config(cls, config, overrides)
    if isinstance(config, Mapping):
        from relsafe.config import apply_overrides

        return from_dict(cls, apply_overrides(dict(config), overrides), where)
    raise ConfigError(
        f"{where}: expected a {cls.__name__}, a mapping or a YAML path, got {type(config).__name__}"
    )


def checkpoint_files(models: Iterable[Any], policy: Any = None) -> list[Path]:
    """Every file read to build ``models`` (their :meth:`~DualEncoder.checkpoint_files`: weights,
    configs, tokenizers, a hyperbolic wrapper's base) and the policy file, without repeats."""
    out: list[Path] = []
    for model in models:
        if model is not None:
            out.extend(Path(p) for p in model.checkpoint_files())
    source = getattr(policy, "source", None) if policy is not None else None
    if source and Path(source).is_file():  # a policy built from a mapping has no file
        out.append(Path(source))
    vocab_src = getattr(getattr(policy, "vocabulary", None), "source", None)
    if vocab_src and Path(vocab_src).is_file():  # a vocabulary file (the built-in is the package's)
        out.append(Path(vocab_src))
    manifest = getattr(getattr(getattr(policy, "world", None), "images", None), "manifest", None)
    if manifest is not None and Path(manifest.path).is_file():
        out.append(Path(manifest.path))
    seen: set[Path] = set()
    uniq = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            uniq.append(p)
    return uniq


def provenance(
    config: Any, seeds: Mapping[str, Any], models: Iterable[Any] = (), policy: Any = None
) -> dict[str, Any]:
    """:func:`relsafe.provenance.collect_provenance` with the SHA-256 of every file ``models``
    and ``policy`` were read from."""
    from relsafe.provenance import collect_provenance

    prov = collect_provenance(
        config=config, seeds=dict(seeds), checkpoints=checkpoint_files(models, policy)
    )
    if policy is not None and getattr(policy, "vocabulary", None) is not None:
        from relsafe.data.world import world_of

        prov["world"] = world_of(policy).describe()  # which world, vocabulary and manifest
    return prov
