"""Hostile training configs (issue 17, finding 3): NaN / inf learning rates, alphas and loss
weights, zero logging and checkpoint intervals, ``dropout=5``, absurd batch sizes, steps and
calibration pairs, for every training method and for pretraining. Each must be a clean error naming
the key and its bound, before any model is loaded, and must leave the existing ``--out`` folder
alone. (Kill -9 during an edit and a checkpoint write is exercised in ``tests/test_faults.py``.)
"""

from __future__ import annotations

from pathlib import Path

from hostile import Case

# (method, key, value): every one must be refused
BAD_SETS: list[tuple[str, str, str]] = [
    ("relational-lora", "lr", ".nan"),
    ("relational-lora", "lr", ".inf"),
    ("relational-lora", "lr", "1.0e+30"),
    ("relational-lora", "lr", "nan"),
    ("relational-lora", "alpha", ".nan"),
    ("relational-lora", "w_forget", ".nan"),
    ("relational-lora", "w_separation", "-.inf"),
    ("relational-lora", "log_every", "0"),
    ("relational-lora", "checkpoint_every", "0"),
    ("relational-lora", "dropout", "5"),
    ("relational-lora", "batch_forget", "100000000"),
    ("relational-lora", "steps", "1000000000"),
    ("relational-lora", "steps", "1e9"),
    ("relational-lora", "margin", ".nan"),
    ("concept-erasure", "lr", ".nan"),
    ("concept-erasure", "dropout", "-1"),
    ("safeclip", "lr", ".nan"),
    ("safeclip", "alpha", ".inf"),
    ("safeclip", "dropout", "5"),
    ("safeclip", "n_per_pair", "100000000"),
    ("safeclip", "log_every", "0"),
    ("hysac", "lr", ".nan"),
    ("hysac", "scalar_lr", ".nan"),
    ("hysac", "lora_alpha", ".nan"),
    ("hysac", "checkpoint_every", "0"),
    ("hysac", "log_every", "0"),
    ("hysac", "dropout", "5"),
    ("hysac", "steps", "1000000000"),
    ("hysac", "traversal_quantile", ".nan"),
    ("uwm", "n_per_pair", "100000000"),
    ("uwm", "batch_size", "100000000"),
    ("uwm", "alpha", "1.0e+30"),
]

BAD_PRETRAIN: list[tuple[str, str]] = [
    ("lr", ".nan"),
    ("grad_clip", ".nan"),
    ("log_every", "0"),
    ("checkpoint_every", "0"),
    ("batch_size", "100000000"),
    ("steps", "1000000000"),
    ("embed_dim", "-5"),
]


def cases(tmp: Path) -> list[Case]:
    keep = tmp / "training_keep"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "record.json").write_text('{"method": "relational-lora"}\n')
    out: list[Case] = []
    for method, key, value in BAD_SETS:
        argv = ["edit", "--method", method, "--out", str(keep), "--set", f"{key}={value}"]
        out.append(Case(f"edit:{method}:{key}={value}", argv, keep=[keep]))
    cfg = tmp / "training_cfg.yaml"
    cfg.write_text("lr: .nan\nlog_every: 0\n")
    argv = ["edit", "--method", "relational-lora", "--out", str(keep), "--config", str(cfg)]
    out.append(Case("edit:config-file-nan-lr", argv, keep=[keep]))
    pre_out = tmp / "pretrain_out"
    for key, value in BAD_PRETRAIN:
        argv = ["pretrain", "--out", str(pre_out), "--set", f"{key}={value}", "--no-progress"]
        out.append(Case(f"pretrain:{key}={value}", argv))
    return out
