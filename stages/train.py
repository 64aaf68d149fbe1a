"""DVC stage 'train' (see dvc.yaml). All logic lives in brainsynth.pipeline.train."""

from brainsynth.pipeline.common import run_stage
from brainsynth.pipeline.train import run

if __name__ == "__main__":
    run_stage("train", run)
