"""Config files: schema validation, closest-key hints, typed overrides, inheritance, the MambaOut recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from visbench.classification.trainer import effective_lr
from visbench.config import ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parent.parent
IMAGENET = sorted(p for p in (REPO / "configs" / "imagenet").glob("*.yaml") if not p.name.startswith("_"))


def test_misspelt_key_names_it_and_the_closest_valid_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'optim.weight_decy'.*did you mean 'weight_decay'"):
        load_config(path)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'optimizer'.*did you mean 'optim'"):
        load_config(path)


def test_wrong_type_names_key_and_expected_type(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_size: big\n")
    with pytest.raises(ConfigError, match=r"train.batch_size: expected int"):
        load_config(path)


def test_overrides_are_typed_and_validated() -> None:
    cfg = load_config(
        None, ["optim.lr=1e-3", "train.batch_size=32", "data.input_size=[64, 64]", "train.ema=false"]
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.batch_size == 32 and cfg.data.input_size == [64, 64] and cfg.train.ema is False
    with pytest.raises(ConfigError, match=r"'train.batch_sise'.*did you mean 'batch_size'"):
        load_config(None, ["train.batch_sise=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("train.batch_size")


def test_base_inheritance_merges_sections(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("optim:\n  weight_decay: 0.1\n  opt: sgd\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  opt: adamw\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.optim.opt == "adamw" and cfg.optim.weight_decay == pytest.approx(0.1)


@pytest.mark.parametrize("path", IMAGENET, ids=lambda p: p.stem)
def test_imagenet_configs_follow_the_mambaout_recipe(path: Path) -> None:
    cfg = load_config(path)
    size = cfg.model.name.rsplit("_", 1)[1]
    assert (
        cfg.model.drop_path_rate
        == {"femto": 0.025, "kobe": 0.025, "tiny": 0.2, "small": 0.4, "base": 0.6}[size]
    )
    assert (cfg.sched.epochs, cfg.sched.warmup_epochs, cfg.sched.min_lr) == (300, 20, pytest.approx(1e-5))
    assert (cfg.optim.opt, cfg.optim.weight_decay) == ("adamw", pytest.approx(0.05))
    assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.reprob, cfg.aug.smoothing) == (0.8, 1.0, 0.25, 0.1)
    assert cfg.aug.auto_augment.startswith("rand-m9")
    # 8 processes x 128 x 4 accumulation = 4096 -> exactly the published 4e-3; linear in the global batch.
    assert effective_lr(cfg, world_size=8) == pytest.approx(4e-3)
    assert effective_lr(cfg, world_size=1) == pytest.approx(5e-4)


def test_imagenet_configs_cover_every_family() -> None:
    names = {p.stem for p in IMAGENET}
    for family in ("gated_cnn", "ssm_causal", "ssm_bidir", "ssm_cross2d", "attn", "attn_causal"):
        assert {f"{family}_{s}" for s in ("femto", "kobe", "tiny", "small", "base")} <= names
    assert {"vit_tiny", "vit_small", "vit_base", "vit_causal_small", "vim_tiny", "vim_small"} <= names
