"""Experiment configuration: nested dataclasses, YAML loading, dotted overrides, one ConfigError.

Every field carries a one-line ``help`` that doubles as documentation for ``fedit validate`` and
``--help``. The sections live in ``training`` (model, LoRA, data, local training),
``federation`` (clients, strategy, Flower) and ``evaluation`` (held-out scoring, judge,
compare); ``schema.Config`` nests them, and ``loader`` reads YAML and ``key=value`` overrides.

Example:
    cfg = load_config("configs/quickstart.yaml", ["federation.rounds=3", "train.lr=1e-3"])
"""

from fedit.config.adversary import ATTACKS, DEFENCES, AttackConfig, RobustConfig
from fedit.config.evaluation import JUDGE_MODES, CompareConfig, EvalConfig, JudgeConfig
from fedit.config.federation import (
    COMPRESSIONS,
    SELECTIONS,
    STRATEGIES,
    FederationConfig,
    FlowerConfig,
    StrategyConfig,
)
from fedit.config.fields import ConfigError
from fedit.config.loader import (
    changed_settings,
    config_from_dict,
    field_help,
    flatten,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
)
from fedit.config.privacy import ACCOUNTANTS, NOISE_AT, PRIVACY_LEVELS, PrivacyConfig
from fedit.config.schema import ENGINES, Config
from fedit.config.system import PROFILE_SOURCES, SystemConfig
from fedit.config.training import (
    AUTOCAST,
    DEVICES,
    DPO_LOSSES,
    DPO_REFERENCES,
    DTYPES,
    LOCAL_LR_SCHEDULES,
    LR_SCHEDULES,
    OBJECTIVES,
    PARTITION_METHODS,
    QUANTIZATIONS,
    TEMPLATES,
    ColumnsConfig,
    DataConfig,
    DPOConfig,
    LoraConfig,
    ModelConfig,
    PartitionConfig,
    SyntheticConfig,
    TrainConfig,
)

__all__ = [
    "ACCOUNTANTS",
    "ATTACKS",
    "NOISE_AT",
    "PRIVACY_LEVELS",
    "PrivacyConfig",
    "AUTOCAST",
    "DEFENCES",
    "AttackConfig",
    "RobustConfig",
    "COMPRESSIONS",
    "DEVICES",
    "DPO_LOSSES",
    "DPO_REFERENCES",
    "DTYPES",
    "ENGINES",
    "JUDGE_MODES",
    "LOCAL_LR_SCHEDULES",
    "LR_SCHEDULES",
    "OBJECTIVES",
    "PARTITION_METHODS",
    "PROFILE_SOURCES",
    "QUANTIZATIONS",
    "SELECTIONS",
    "STRATEGIES",
    "TEMPLATES",
    "ColumnsConfig",
    "CompareConfig",
    "Config",
    "ConfigError",
    "DPOConfig",
    "DataConfig",
    "EvalConfig",
    "FederationConfig",
    "FlowerConfig",
    "JudgeConfig",
    "LoraConfig",
    "ModelConfig",
    "PartitionConfig",
    "StrategyConfig",
    "SyntheticConfig",
    "SystemConfig",
    "TrainConfig",
    "changed_settings",
    "flatten",
    "config_from_dict",
    "field_help",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
]
