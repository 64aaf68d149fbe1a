"""DVC stage 'prepare' (see dvc.yaml). All logic lives in brainsynth.pipeline.prepare."""

from brainsynth.pipeline.common import run_stage
from brainsynth.pipeline.prepare import run

if __name__ == "__main__":
    run_stage("prepare", run)
