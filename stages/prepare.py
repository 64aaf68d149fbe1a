"""DVC stage 'prepare' (see dvc.yaml). All logic lives in brainsynth.pipeline.prepare."""

from brainsynth.config import check_or_exit

if __name__ == "__main__":
    cfg = check_or_exit(data_source=True)  # before the heavy imports below: a bad params.yaml or data.source fails in well under a second
    from brainsynth.pipeline.prepare import run
    from brainsynth.pipeline.stage import run_stage

    run_stage("prepare", run, cfg)
