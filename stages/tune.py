"""DVC stage 'tune' (see dvc.yaml). All logic lives in brainsynth.pipeline.tune."""

from brainsynth.config import check_or_exit

if __name__ == "__main__":
    cfg = check_or_exit()  # before the heavy imports below: a bad params.yaml fails in well under a second
    from brainsynth.pipeline.tune import run
    from brainsynth.pipeline.stage import run_stage

    run_stage("tune", run, cfg)
