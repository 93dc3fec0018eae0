"""Unsafe Weights Manipulation (UWM): training-free safety by negating unsafe-specific weights.

From "Safe Vision-Language Models via Unsafe Weights Manipulation" (D'Incà et al., arXiv
2503.11742), Sec. 4 (the method) and its official code, as restated in ``METHODS.md`` section 3.

Pipeline (one forward pass over a paired calibration set, then one in-place edit):

1. **Layers** (Sec. 4, "where to look"): per tower, the ``nn.Linear`` layers the model's preset
   names for UWM's roles (:data:`~relsafe.methods.uwm.config.DEFAULT_ROLES`: text ``attn_out``,
   vision ``mlp_out``; for CLIP the text attention ``out_proj`` and the vision ``mlp.fc2`` of every
   block), overridable with ``text_layers`` / ``vision_layers``
   globs relative to the tower. Only weights, never biases.
2. **Calibration**: pairs (S_b, U_b) of safe/unsafe texts for the text tower and (V_b, G_b) of
   safe/unsafe images for the vision tower; the towers are scored independently. Each batch of
   pairs is one forward pass of ``[safe_1..safe_B; unsafe_1..unsafe_B]``; forward *pre*-hooks read
   each targeted layer's input ``X_b`` (tokens x d_in) and keep only per-sample vectors:
   ``a_b[j] = ||X_b[:, j]||_2`` over tokens and ``sig_b[j] = std_tokens(X_b[:, j]) + 1e-8`` (text:
   real tokens only, from the attention mask).
3. **Score** (Sec. 4, information-flow importance): with ``M_b = a_b[j] |W_ij|``,
   ``out_b[i] = mean_j M_b[i, j]``, ``in_b[j] = mean_i M_b[i, j]`` and
   ``Phi_b = out_b[i] in_b[j] / sig_b[j]``, ``Score = mean_b Phi^u_b / Phi^s_b``. The ratio factorises
   into ``R_b[i] = out^u_b[i] / out^s_b[i]`` (B x d_out) and
   ``C_b[j] = (a^u_b[j] / sig^u_b[j]) / (a^s_b[j] / sig^s_b[j])`` (B x d_in; the column mean of
   ``|W|`` in ``in_b`` cancels), so ``Score = R^T C / B``: one matmul per batch, never a
   per-sample d_out x d_in tensor. Text scores are multiplied by ``|W|`` (the paper's prior; it hurts
   vision, so ``vision_prior`` is off by default).
4. **Selection** (Sec. 4, adaptive threshold): normalise a layer's scores to sum to 1, sort
   descending and take the shortest prefix holding ``tau`` (2%) of the mass (the code's
   ``sparsity = 0.98``); or the top ``fraction`` by count. Per layer (default) or pooled over all
   targeted layers of a tower (``scope="global"``).
5. **Manipulation**: ``W[mask] *= alpha`` in place (``alpha = -1`` negates, ``0`` prunes).

The mask (:class:`UWMMask`) records, per layer, the selected flat indices (int64, or packed bits
when smaller), the SHA-256 of the original and of the edited weight, shape, dtype and alpha, plus the
original values when ``alpha != -1`` (negation is its own exact inverse in floating point; any other
factor is not). :func:`revert` restores bit-identical weights and refuses a model whose weights are
not the recorded edited ones; :func:`revert_edit` is the method's ``revert`` hook that
:func:`relsafe.api.revert` calls to undo a saved edit.

Modules: :mod:`~relsafe.methods.uwm.config` (:class:`UWMConfig`), :mod:`~relsafe.methods.uwm.data`
(calibration pairs), :mod:`~relsafe.methods.uwm.scores` (statistics and factorised score),
:mod:`~relsafe.methods.uwm.layers` (targeted layers), :mod:`~relsafe.methods.uwm.calibrate`
(hooks and :func:`compute_scores`), :mod:`~relsafe.methods.uwm.select` (mass selection) and
:mod:`~relsafe.methods.uwm.mask` (apply, save, load, revert). This module registers the method.
"""

from __future__ import annotations

import time
from typing import Any

from relsafe.config import to_dict
from relsafe.methods.base import EditRecord, EditResult, register_method
from relsafe.methods.uwm.calibrate import Calibration, compute_scores, min_contrast, sync
from relsafe.methods.uwm.config import DEFAULT_ROLES, TOWERS, UWMConfig
from relsafe.methods.uwm.data import (
    CalibrationData,
    calibration_data,
    check_pairs,
    neighbour_calibration_data,
)
from relsafe.methods.uwm.layers import target_layers
from relsafe.methods.uwm.mask import (
    MASK_JSON,
    MASK_TENSORS,
    LayerMask,
    UWMMask,
    apply_selection,
    find_mask_dir,
    mask_state,
    revert,
    revert_edit,
    weight_sha256,
)
from relsafe.methods.uwm.scores import (
    RATIO_EPS,
    RATIO_FLOOR,
    STD_EPS,
    factorised_score,
    pair_factors,
    token_stats,
)
from relsafe.methods.uwm.select import select_weights, top_mass_indices

__all__ = [
    "DEFAULT_ROLES",
    "MASK_JSON",
    "MASK_TENSORS",
    "RATIO_EPS",
    "RATIO_FLOOR",
    "STD_EPS",
    "TOWERS",
    "Calibration",
    "CalibrationData",
    "LayerMask",
    "UWMConfig",
    "UWMMask",
    "apply_selection",
    "calibration_data",
    "compute_scores",
    "min_contrast",
    "neighbour_calibration_data",
    "factorised_score",
    "find_mask_dir",
    "mask_state",
    "pair_factors",
    "revert",
    "revert_edit",
    "select_weights",
    "target_layers",
    "token_stats",
    "top_mass_indices",
    "uwm",
    "weight_sha256",
]


def _sync_model(model: Any) -> None:
    sync(model.device)


@register_method(
    "uwm",
    "training-free: negate the weights most specific to unsafe inputs (Unsafe Weights Manipulation)",
    UWMConfig,
    revert=revert_edit,
)
def uwm(
    model: Any,
    policy: Any,
    cfg: UWMConfig | None = None,
    *,
    progress: bool = True,
    workdir: str | None = None,
    data: Any = None,
) -> EditResult:
    """Apply UWM to ``model`` in place (METHODS.md section 3; arXiv 2503.11742 Sec. 4).

    Args:
        model: a :class:`~relsafe.models.base.DualEncoder`.
        policy: the safety policy (calibration pairs from RelWorld); may be None when ``data`` is
            given.
        cfg: :class:`UWMConfig` (defaults when None).
        data: optional calibration data, a mapping/object with ``S``, ``U``, ``V``, ``G``
            (e.g. :class:`relsafe.data.visu.VisuData`); overrides the policy's RelWorld pairs.
        workdir: unused (UWM has no checkpoints to resume).

    Returns:
        :class:`EditResult` with ``adapter=None`` and ``artifacts={"mask": UWMMask, "save": fn}``
        where ``fn(folder)`` writes the mask. ``record.params_touched`` is the number of weights
        multiplied by alpha; ``record.extra`` has per-layer counts, calibration size and timings.
    """
    del workdir
    cfg = cfg if cfg is not None else UWMConfig()
    cfg.validate()
    t_start = time.perf_counter()
    for tower in cfg.towers:  # misspelt layer globs fail before any data is built
        target_layers(model, tower, cfg.text_layers if tower == "text" else cfg.vision_layers)
    if cfg.contrast == "neighbours" and data is None:
        sets = neighbour_calibration_data(policy, cfg)
    else:
        sets = {"counterpart": calibration_data(policy, cfg, data)}
    for cal_data in sets.values():
        for tower in cfg.towers:  # fail on bad data before any forward pass
            check_pairs(cal_data, tower)
    t_data = time.perf_counter() - t_start
    cal = min_contrast(
        {k: compute_scores(model, d, cfg, progress=progress) for k, d in sets.items()}
    )
    cal_data = next(iter(sets.values()))
    t0 = time.perf_counter()
    selection = select_weights(cal.scores, cfg)
    mask = apply_selection(model, selection, float(cfg.alpha), cal.scores)
    _sync_model(model)
    t_edit = time.perf_counter() - t0
    mask.config = to_dict(cfg)
    del cal.scores
    total = time.perf_counter() - t_start
    warnings = []
    if cfg.alpha == 1.0:
        warnings.append("alpha=1 leaves every weight unchanged")
    if sum(d.dropped_image_pairs for d in sets.values()):
        warnings.append(
            f"{sum(d.dropped_image_pairs for d in sets.values())} image pairs lacked a safe or "
            "unsafe image and were "
            "left out of the vision calibration"
        )
    per_tower = {t: 0 for t in cfg.towers}
    for lm in mask.layers.values():
        per_tower[lm.tower] += lm.n_selected
    record = EditRecord(
        method="uwm",
        config=to_dict(cfg),
        model=str(getattr(model, "spec", type(model).__name__)),
        data_sizes={f"{t}_pairs": n for t, n in cal.n_pairs.items()},
        params_touched=mask.n_selected,
        params_total=int(sum(p.numel() for p in model.parameters())),
        time_s=total,
        warnings=warnings,
        extra={
            "layers": mask.summary(),
            "selected_per_tower": per_tower,
            "calibration_size": dict(cal.n_pairs),
            "calibration_source": ", ".join(d.source for d in sets.values()),
            "contrast": cfg.contrast,
            "calibration_s": cal.timings["forward_s"],
            "data_s": t_data,
            "scoring_s": cal.timings["scoring_s"],
            "input_wait_s": cal.timings["input_wait_s"],
            "select_edit_s": t_edit,
            "stats_peak_bytes": cal.stats_peak_bytes,
            "score_bytes": cal.score_bytes,
        },
    )
    return EditResult(
        model=model, record=record, adapter=None, artifacts={"mask": mask, "save": mask.save}
    )
