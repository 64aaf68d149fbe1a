"""DVC stage 'tune' (see dvc.yaml). All logic lives in brainsynth.pipeline.tune."""

from brainsynth.pipeline.common import run_stage
from brainsynth.pipeline.tune import run

if __name__ == "__main__":
    run_stage("tune", run)
