"""DVC stage 'train' (see dvc.yaml). All logic lives in brainsynth.pipeline.train."""

from brainsynth.config import check_or_exit

if __name__ == "__main__":
    cfg = check_or_exit()  # before the heavy imports below: a bad params.yaml fails in well under a second
    from brainsynth.distributed import launched_by_torchrun, relaunch

    if cfg.train.nproc_per_node > 1 and not launched_by_torchrun():
        relaunch(cfg.train.nproc_per_node, __file__)  # the same script, N processes (single node)
    from brainsynth.pipeline.train import run
    from brainsynth.pipeline.stage import run_stage

    run_stage("train", run, cfg)
