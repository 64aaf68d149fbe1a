"""One validated configuration object for every stage, loaded from ``params.yaml``.

Four modules: ``schema`` (the sections and their rules), ``load`` (reading, overrides, one-line
errors, the stages' pre-check), ``keys`` (key paths) and ``reads`` (recording which params a stage reads).

Every knob of the pipeline lives in params.yaml, and only there: this module knows the shape and
the rules of each value but supplies none of them (no defaults), so code, tests and users all run
the values params.yaml holds. Errors are turned into one line that names the key path, the
offending value and what is allowed, so a typo fails in well under a second, before any data is
touched.

Reads can be recorded (``record_reads``): the test suite uses it to check that every param a stage
reads is declared under that stage's ``params:`` in dvc.yaml, so DVC reruns exactly what a change
affects.
"""

from brainsynth.config.keys import flat_keys, flatten
from brainsynth.config.load import check_data_source, check_or_exit, load, load_overrides, validate, with_overrides
from brainsynth.config.reads import record_reads
from brainsynth.config.schema import (
                                      ClassifierConfig,
                                      Config,
                                      ConsistencyConfig,
                                      DataConfig,
                                      EmbeddedDataConfig,
                                      EvaluateConfig,
                                      FaderConfig,
                                      FilterConfig,
                                      GenerateConfig,
                                      JudgeConfig,
                                      LossConfig,
                                      MlflowConfig,
                                      ModelConfig,
                                      OptimConfig,
                                      SearchDimension,
                                      SwdConfig,
                                      TrainConfig,
                                      TuneConfig,
                                      VolumeConfig,
)
from brainsynth.errors import ConfigError

__all__ = ["ClassifierConfig", "Config", "ConfigError", "ConsistencyConfig", "DataConfig", "EmbeddedDataConfig", "EvaluateConfig", "FaderConfig",
           "FilterConfig", "GenerateConfig", "JudgeConfig", "LossConfig", "MlflowConfig", "ModelConfig", "OptimConfig", "SearchDimension", "SwdConfig",
           "TrainConfig", "TuneConfig", "VolumeConfig", "check_data_source", "check_or_exit", "flat_keys", "flatten", "load", "load_overrides",
           "record_reads", "validate", "with_overrides"]
