"""The config of ``relsafe run`` (:mod:`relsafe.api.run`): the model, the policy, the methods and
suites, seeds, where the material comes from, the evaluation's compute mode, and further policies
(:class:`PolicyRun`), validated before any work starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.api._resolve import build_config
from relsafe.config import ConfigError, from_dict

__all__ = ["MethodSpec", "PolicyRun", "RunConfig", "load_run_config"]


def _all_suites() -> dict[str, dict[str, Any]]:
    from relsafe.eval.suites import suites

    return {name: {} for name in suites()}


@dataclass
class MethodSpec:
    name: str
    label: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class PolicyRun:
    """A further policy of a run (``extra_policies``), scored with its own methods into
    ``OUT/policies/<policy name>/``."""

    policy: str
    methods: list[MethodSpec] = field(default_factory=list)
    suites: dict[str, dict[str, Any]] | None = None  # None: the run's suites


@dataclass
class RunConfig:
    model: str = "relsafe-mini"
    policy: str = "default"
    methods: list[MethodSpec] = field(default_factory=list)
    suites: dict[str, dict[str, Any]] = field(default_factory=_all_suites)  # every registered one
    cache_dir: str | None = None  # default: OUT/cache
    report: bool = True
    examples: int = 6  # example images in the report
    seeds: int = 3  # training seeds per method (seed, seed + 1, ...); intervals combine them
    resamples: int = 1000  # bootstrap replicates per headline interval
    # the embedding engine's compute mode in every evaluation (docs/performance.md): auto is
    # bfloat16 on CUDA and on a CPU with bf16 units whose probe agrees; float32 gives numbers
    # that do not depend on the machine
    dtype: str = "auto"
    # where the material comes from: None / "relworld" (the policy vocabulary's default: RelWorld
    # renders) or {vocabulary: NAME|PATH, data: MANIFEST, skip_bad: false} (docs/your-data.md)
    world: Any = None
    # a ViSU file (a `split` on every row): quadruplet methods train on its train/val rows, the
    # visu and safeground suites score its test rows
    visu: str | None = None
    # further policies, each with its own methods, in OUT/policies/<name>/ (PolicyRun)
    extra_policies: list[PolicyRun] = field(default_factory=list)
    # worker processes for the independent stages (every edit, then every model's evaluations, of
    # every policy), each on its share of the cores; 1: all in this process. Not part of any stage
    # key: a run resumes with another jobs (docs/performance.md, "relsafe run --jobs")
    jobs: int = 1

    def nested(self, extra: PolicyRun, cache_dir: str) -> RunConfig:
        """The config of one of ``extra_policies`` as a run of its own."""
        return dataclasses.replace(
            self,
            policy=extra.policy,
            methods=list(extra.methods),
            suites=dict(self.suites if extra.suites is None else extra.suites),
            cache_dir=cache_dir,
            report=False,
            extra_policies=[],
            jobs=1,  # (the top run's workers already did the nested policies' stages)
        )

    def validate(self) -> None:
        from relsafe.data.world_spec import check_world_spec
        from relsafe.engine.precision import DTYPE_CHOICES
        from relsafe.eval.suites import suites as all_suites
        from relsafe.methods.base import methods as all_methods

        check_world_spec(self.world, "world")
        if self.seeds < 1:
            raise ConfigError(f"seeds: must be >= 1, got {self.seeds}")
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"dtype: unknown {self.dtype!r} (available: {list(DTYPE_CHOICES)})")
        if (
            isinstance(self.jobs, bool)
            or not isinstance(self.jobs, int)
            or not 1 <= self.jobs <= 64
        ):
            raise ConfigError(f"jobs: must be an integer in [1, 64], got {self.jobs!r}")
        if self.resamples < 100:
            raise ConfigError(f"resamples: must be >= 100 for a 95% interval, got {self.resamples}")

        known_s = all_suites()
        for s in self.suites:
            if s not in known_s:
                raise ConfigError(f"suites: unknown suite {s!r} (available: {sorted(known_s)})")
        known_m = all_methods()
        labels = set()
        for i, m in enumerate(self.methods):
            if m.name not in known_m:
                raise ConfigError(
                    f"methods[{i}]: unknown method {m.name!r} (available: {sorted(known_m)})"
                )
            if m.key in labels or m.key == "original":
                raise ConfigError(f"methods[{i}]: label {m.key!r} is used twice (give `label:`)")
            labels.add(m.key)
            from_dict(known_m[m.name].config_cls, dict(m.config), f"methods[{i}].config")
        for s, cfg in self.suites.items():
            from_dict(known_s[s].config_cls, dict(cfg or {}), f"suites.{s}")
        seen = {self.policy}
        for i, extra in enumerate(self.extra_policies):
            if extra.policy in seen:
                raise ConfigError(
                    f"extra_policies[{i}]: policy {extra.policy!r} is already in the run"
                )
            seen.add(extra.policy)
            if not extra.methods:
                raise ConfigError(f"extra_policies[{i}] ({extra.policy}): names no methods")
            try:
                self.nested(extra, "").validate()
            except ConfigError as e:
                raise ConfigError(f"extra_policies[{i}] ({extra.policy}): {e}") from e


def load_run_config(
    path: RunConfig | str | Path | None, overrides: Sequence[str] = ()
) -> RunConfig:
    """A validated :class:`RunConfig` from a YAML file (or a :class:`RunConfig`) plus ``--set``
    overrides."""
    where = str(path) if path and not isinstance(path, RunConfig) else "run config"
    return build_config(RunConfig, path, overrides, where)
