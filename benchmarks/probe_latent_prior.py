"""Does a better latent prior at sampling time fix the samples? (issue #24, 2026-12-04)

Decodes z drawn from other distributions than the N(0, I) the model was trained with and scores the
samples on the test split like bench_levers does (one seed): swd, GAN-test by the independent judge
and by the CNN, the judge's TSTR, in-domain precision/recall, the memorisation audit. Priors:
``standard`` N(0, I); ``class`` a Gaussian per grade fitted to the training split's posterior means
(Ledoit-Wolf shrinkage: an ex-post density estimate, Ghosh et al. 2020); ``pooled`` one such Gaussian
for all grades; ``t<T>`` N(0, I) with the spatial latent scaled by T (sampling temperature).

    python benchmarks/probe_latent_prior.py grade_spatial 1 standard,class,pooled,t0.5
    (arguments: the arm's model file benchmarks/levers/NAME.pt, threads, priors)

Not a test: the table is in benchmarks/README.md ("A better latent prior without retraining").
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from brainsynth import metrics as M
from brainsynth.config import load
from brainsynth.data.embedded import build_cohort
from brainsynth.data.splits import split_by_subject
from brainsynth.downstream import class_scores, penultimate_features, train_classifier
from brainsynth.inference import SynthModel, predict_classes, to_uint8, unit_batches
from brainsynth.judge import train_judge

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
cfg = load(REPO / "params.yaml")
name = sys.argv[1]
model = SynthModel.load(REPO / "benchmarks" / "levers" / f"{name}.pt")
cohort = build_cohort(cfg.data.embedded, model.image_size, cfg.seed)
splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
(tx, ty), (sx, sy) = [(cohort.images[splits == s], cohort.labels[splits == s]) for s in ("train", "test")]
K = model.n_classes


@torch.no_grad()
def encode(images, labels):
    mus = []
    for start, x in unit_batches(images, torch.device("cpu")):
        mu, _ = model.vae.encode(x, torch.as_tensor(labels[start:start+len(x)]))
        mus.append(mu)
    return torch.cat(mus).numpy()
model.vae.eval()
mu = encode(tx, ty)
print(name, "spatial mu std", mu[:, model.decoder.vector_dim :].std(0).mean(), "vector mu std", mu[:, : model.decoder.vector_dim].std(0).mean(), "z", mu.shape, "mean|mu|", np.abs(mu.mean(0)).mean(), "std", mu.std(0).mean())


@torch.no_grad()
def decode(z, labels):
    out = []
    for s in range(0, len(z), 256):
        out.append(to_uint8(model.vae.decode(torch.as_tensor(z[s:s+256], dtype=torch.float32), torch.as_tensor(labels[s:s+256]))).cpu())
    return torch.cat(out).squeeze(1).numpy()


def sampler(kind):
    fits = {}
    if kind == "class":
        for c in range(K):
            lw = LedoitWolf().fit(mu[ty == c]); fits[c] = (lw.location_, np.linalg.cholesky(lw.covariance_))
    if kind == "pooled":
        lw = LedoitWolf().fit(mu); f = (lw.location_, np.linalg.cholesky(lw.covariance_)); fits = {c: f for c in range(K)}
    def draw(labels, seed):
        labels = np.asarray(labels)
        if kind == "standard":
            return model.sample(labels, seed)
        if kind.startswith("t"):
            t = float(kind[1:])
            z = torch.randn(len(labels), mu.shape[1], generator=torch.Generator().manual_seed(seed)).numpy()
            z[:, model.decoder.vector_dim :] *= t
            return decode(z, labels)
        rng = np.random.default_rng(seed)
        z = np.zeros((len(labels), mu.shape[1]), np.float32)
        for c in range(K):
            idx = labels == c
            m, L = fits[c]
            z[idx] = m + rng.standard_normal((idx.sum(), mu.shape[1])) @ L.T
        return decode(z, labels)
    return draw

judge = train_judge(tx, ty, 0, cfg.evaluate.judge)
cnn = train_classifier(tx, ty, K, cfg.evaluate.utility_epochs, 0, torch.device("cpu"), cfg.evaluate.classifier)
real_feat = penultimate_features(cnn, sx)
print("judge trtr", class_scores(judge.predict(sx), sy)["balanced_accuracy"], "cnn trtr", class_scores(predict_classes(cnn, sx), sy)["balanced_accuracy"])
for kind in sys.argv[3].split(","):
    t = time.time()
    draw = sampler(kind)
    samples = draw(sy, 1)
    train_s = draw(ty, 1000)
    jt = train_judge(train_s, ty, 0, cfg.evaluate.judge)
    pr = M.precision_recall(real_feat, penultimate_features(cnn, samples))
    mem = M.memorization_audit(samples, sx, tx)
    print(kind, dict(swd=round(M.swd(sx, samples, cfg.seed, cfg.swd.patches_per_image, cfg.swd.directions)["swd"], 2),
        judge_gan=round(class_scores(judge.predict(samples), sy)["balanced_accuracy"], 3),
        cnn_gan=round(class_scores(predict_classes(cnn, samples), sy)["balanced_accuracy"], 3),
        judge_tstr=round(class_scores(jt.predict(sx), sy)["balanced_accuracy"], 3),
        P=round(pr["precision"], 3), R=round(pr["recall"], 3), mem={k: v for k, v in mem.items() if not isinstance(v, (list, np.ndarray))}), round(time.time()-t), "s", flush=True)
