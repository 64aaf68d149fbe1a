"""DVC stage 'tune' (see dvc.yaml). All logic lives in brainsynth.pipeline.tune."""

from brainsynth.config import check_or_exit

if __name__ == "__main__":
    check_or_exit()  # before the heavy imports below: a bad params.yaml fails in well under a second
    from brainsynth.pipeline.common import run_stage
    from brainsynth.pipeline.tune import run

    run_stage("tune", run)
