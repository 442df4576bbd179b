"""One typed configuration object for every run, saved beside its results.

:class:`ExperimentConfig` is the entry point: ``ExperimentConfig.load(path).override(["train.lr=1e-3"])``.
Its sections are pydantic models, one module per part of the method (:mod:`~privacysf.config.codec`,
:mod:`~privacysf.config.mapper`, :mod:`~privacysf.config.augment`), the rest of a run
(:mod:`~privacysf.config.sections`) and the studies built on runs (:mod:`~privacysf.config.studies`);
any bad value raises :class:`~privacysf.errors.ConfigError` naming the field and what it allows.
"""

from privacysf.config.augment import AUGMENTATIONS, AugmentConfig, dp_conflicts, permutation_conflicts
from privacysf.config.codec import (
    IMAGE_MODES,
    WIRE_COMPRESSION_NAMES,
    WIRE_DTYPE_NAMES,
    CodecConfig,
    TaskHead,
    TaskHeadNetwork,
    ViewAugmentation,
    WireCompression,
    WireDtype,
)
from privacysf.config.experiment import ExperimentConfig
from privacysf.config.mapper import MAPPER_RUNTIMES, TRANSFORMER_LR, MapperConfig, MapperRuntime
from privacysf.config.sections import DataConfig, EncryptionConfig, KeyConfig, TrainConfig, UNetConfig
from privacysf.config.studies import (
    CENTER_PARTITIONS,
    FEDERATION_MODES,
    KEY_SETTINGS,
    AblationConfig,
    AttackConfig,
    FederationConfig,
)

__all__ = [
    "AblationConfig",
    "AUGMENTATIONS",
    "CENTER_PARTITIONS",
    "FEDERATION_MODES",
    "IMAGE_MODES",
    "MAPPER_RUNTIMES",
    "KEY_SETTINGS",
    "TRANSFORMER_LR",
    "WIRE_COMPRESSION_NAMES",
    "WIRE_DTYPE_NAMES",
    "AttackConfig",
    "AugmentConfig",
    "CodecConfig",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "EncryptionConfig",
    "KeyConfig",
    "MapperConfig",
    "MapperRuntime",
    "TaskHead",
    "TaskHeadNetwork",
    "TrainConfig",
    "UNetConfig",
    "ViewAugmentation",
    "WireCompression",
    "WireDtype",
    "dp_conflicts",
    "permutation_conflicts",
]
