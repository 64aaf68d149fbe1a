"""DVC stage 'evaluate' (see dvc.yaml). All logic lives in brainsynth.pipeline.evaluate."""

from brainsynth.pipeline.common import run_stage
from brainsynth.pipeline.evaluate import run

if __name__ == "__main__":
    run_stage("evaluate", run)
