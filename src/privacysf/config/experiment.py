"""The whole configuration of a run: its sections, the rules across them, and how it is read and written.

Every command builds an :class:`ExperimentConfig` from defaults, an optional JSON/YAML file and
``--set section.key=value`` overrides, then writes it into the run folder, so a result can always be
traced back to exactly what produced it. Unknown keys are errors rather than silently ignored, because
a typo in a privacy or size setting would otherwise produce a run that looks valid but is not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import Field, model_validator

from privacysf.config.augment import AugmentConfig, dp_conflicts, permutation_conflicts
from privacysf.config.codec import CodecConfig
from privacysf.config.mapper import FORMER_MAPPER_DEFAULTS, MapperConfig
from privacysf.config.model import ConfigModel
from privacysf.config.sections import DataConfig, EncryptionConfig, KeyConfig, TrainConfig, UNetConfig
from privacysf.config.studies import AblationConfig, AttackConfig, FederationConfig
from privacysf.errors import ConfigError


class ExperimentConfig(ConfigModel):
    """Everything a run needs; written to ``config.json`` in its run folder."""

    is_root: ClassVar[bool] = True
    name: str = "run"
    output_dir: str = "runs"
    compare_unet: bool = True
    """``privacysf fit`` also trains the raw U-Net on the same split and budget, for the report."""
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    key: KeyConfig = Field(default_factory=KeyConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    mapper: MapperConfig = Field(default_factory=MapperConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig.recommended)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    ablation: AblationConfig = Field(default_factory=AblationConfig)

    @model_validator(mode="after")
    def _sections_fit_together(self) -> ExperimentConfig:
        """Refuse combinations that would only fail (or silently mislead) minutes into training."""
        size, downsample, stride = self.data.size, self.codec.downsample, math.prod(self.unet.strides)
        problems = []
        if size % downsample:
            problems.append(f"data.size {size} must be a multiple of codec.downsample {downsample}")
        if size % stride:
            problems.append(f"data.size {size} must be divisible by the U-Net's total stride {stride}")
        if self.key.enabled and self.key.permute_tokens:
            problems += [f"key.permute_tokens: {p}" for p in permutation_conflicts(self.mapper, self.augment)]
        problems += dp_conflicts(self.mapper, self.augment, self.codec)
        if self.encryption.enabled:
            tokens = (size // downsample) ** 2
            if self.mapper.kind != "poly":
                problems.append(
                    f"encryption.enabled needs mapper.kind=poly (the {self.mapper.kind} mapper uses "
                    "operations a server cannot apply to ciphertexts)"
                )
            if self.mapper.center_embedding:
                problems.append("encryption.enabled cannot be combined with mapper.center_embedding")
            if tokens and 8192 % tokens:
                problems.append(
                    f"encryption.enabled needs a power-of-two token grid of at most 64x64; data.size "
                    f"{size} / codec.downsample {downsample} gives {size // downsample}"
                )
        problems += shift_conflicts(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def mask_codec_epochs(self) -> int:
        """Epochs the mask codec trains: ``codec.mask_epochs``, at most ``train.epochs``."""
        return min(self.codec.mask_epochs or self.train.epochs, self.train.epochs)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists as tuples) that :meth:`from_dict` turns back into an equal config."""
        return self.model_dump()

    def save(self, path: Path) -> None:
        from privacysf.common.runs import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        return cls.from_dict(_sections(Path(path)))

    @classmethod
    def load_run(cls, path: str | Path) -> ExperimentConfig:
        """A run folder's saved ``config.json``, with the center settings it predates set as they were
        then, so a run of an earlier version reloads into the networks it trained (and is reported
        with them)."""
        values = _sections(Path(path))
        cfg = cls.from_dict(values)
        codec = values.get("codec", {})
        then = []
        if "norm" not in codec:
            then.append("codec.norm=instance")
        if "task_head" not in codec:
            then.append("codec.task_head=mapper")
        if "mask_decoder_width" not in codec:
            then.append(f"codec.mask_decoder_width={cfg.codec.width}")
        mapper = values.get("mapper", {})
        then += [f"mapper.{k}={v}" for k, v in FORMER_MAPPER_DEFAULTS.items() if k not in mapper]
        return cfg.override(then) if then else cfg

    def override(self, assignments: list[str]) -> ExperimentConfig:
        """Apply ``section.key=value`` strings (values parsed as YAML scalars/lists), then check all."""
        values = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ConfigError(f"--set {assignment!r}: expected section.key=value")
            *sections, name = key.strip().split(".")
            target = values
            for section in sections:
                if not isinstance(target.get(section), dict):
                    raise ConfigError(f"--set {assignment!r}: no config section {section!r}")
                target = target[section]
            target[name] = yaml.safe_load(raw)
        return self.from_dict(values)


def shift_conflicts(cfg: ExperimentConfig) -> list[str]:
    """Why per-query shifts (``key.per_query_shift``) or circular padding cannot run with ``cfg``."""
    problems = []
    mapper = cfg.mapper
    if mapper.padding == "circular" and mapper.kind != "poly":
        problems.append(f"mapper.padding=circular is a setting of the poly mapper, not of {mapper.kind}")
    if cfg.key.per_query_shift:
        if mapper.kind != "poly" or mapper.padding != "circular":
            problems.append(
                "key.per_query_shift needs a mapper that commutes with token shifts: "
                "--set mapper.kind=poly --set mapper.padding=circular"
            )
        if cfg.key.enabled and cfg.key.permute_tokens:
            problems.append(
                "key.per_query_shift rolls the token grid, which a secret permutation has scrambled"
            )
        if cfg.encryption.enabled:
            problems.append(
                "key.per_query_shift cannot be combined with encryption.enabled "
                "(ciphertexts hide the codes already)"
            )
    if cfg.encryption.enabled and mapper.padding == "circular":
        problems.append("encryption.enabled evaluates zero-padded convolutions: leave mapper.padding=zeros")
    return problems


def _sections(path: Path) -> dict:
    """A JSON or YAML config file's mapping of sections, read once."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing JSON or YAML file")
    try:
        text = path.read_text()
        values = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON/YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return values
