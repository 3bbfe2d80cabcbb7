"""Evaluation over the whole test split, every rank's slice gathered: loss, accuracy, and for
0/1 targets AUC, log loss and normalized entropy; the reference's MLPerf stop thresholds;
the planted teacher's own metrics (the best possible on planted labels).

Why our own loop: torchmetrics' AUROC (which syncs across ranks) computes the same AUC from
the gathered predictions, and we call it on them; the loss must be the model's own (mse,
bce or wbce, with its clamp), which no binary metric reproduces.
"""

from __future__ import annotations

import numpy as np
import torch

from dlrm_dist import distributed
from dlrm_dist.config import TrainConfig
from dlrm_dist.data import planted
from dlrm_dist.data.batch_source import RawBatch


@torch.no_grad()
def evaluate(model, data, device: torch.device, num_batches: int) -> dict[str, float]:
    """Loss (sample-weighted mean), accuracy (round(p) == t) and, for 0/1 targets, AUC,
    logloss and NE over the first num_batches batches of data (this rank's slices), the
    predictions (B,) of every rank gathered. model(batch) -> (loss, (logits, p))."""
    model.eval()
    preds, targets, total_loss = [], [], 0.0
    for i, batch in enumerate(data):
        if i >= num_batches:
            break
        batch = batch.to(device)
        loss, (_, p) = model(batch)
        total_loss += loss.item() * batch.labels.numel()
        preds.append(p.float())
        targets.append(batch.labels)
    model.train()
    p = distributed.gather_cat(torch.cat(preds)).cpu()
    t = distributed.gather_cat(torch.cat(targets)).cpu()
    out = {
        "loss": distributed.all_sum(total_loss, device) / t.numel(),
        "accuracy": (torch.round(p) == t).float().mean().item(),
    }
    if bool(((t == 0) | (t == 1)).all()) and 0 < t.sum() < t.numel():
        out.update(click_metrics(p, t))
    return out


def teacher_metrics(data, device: torch.device, num_batches: int) -> dict[str, float]:
    """The planted teacher's own AUC, log loss and NE over the first num_batches batches of
    random-fast `data` (this rank's slices, every rank's gathered): its probabilities p
    drew the labels, so no model can beat them on these samples."""
    teacher = planted.Teacher.of(data.spec, data.seed)
    p, t = [], []
    for index in range(min(num_batches, len(data))):
        raw = data.raw(index)
        raw = raw if isinstance(raw, RawBatch) else raw.numpy()  # torch: to the host
        p.append(teacher.probabilities(raw.dense, raw.lengths, raw.values))
        t.append(raw.targets[:, 0].astype(np.float64))
    gathered = [
        distributed.gather_cat(torch.from_numpy(np.concatenate(x)).to(device)).cpu() for x in (p, t)
    ]
    return click_metrics(*gathered)


def click_metrics(p: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """AUC, logloss and normalized entropy (logloss over the entropy of the click rate) of
    predictions p (N,) for 0/1 targets t (N,) holding both classes."""
    from torchmetrics.functional.classification import binary_auroc

    logloss = torch.nn.functional.binary_cross_entropy(p.double(), t.double()).item()
    rate = t.double().mean().item()
    entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    auc = binary_auroc(p, t.long()).item()
    return {"auc": auc, "logloss": logloss, "ne": logloss / entropy}


def threshold_reached(t: TrainConfig, metrics: dict[str, float], best_acc: float) -> str:
    """The reference's --mlperf-acc-threshold / --mlperf-auc-threshold: which was reached
    ("" if none), so training stops (the accuracy is the best so far, in %)."""
    if t.mlperf_acc_threshold > 0 and 100.0 * best_acc > t.mlperf_acc_threshold:
        return "accuracy"
    if t.mlperf_auc_threshold > 0 and metrics.get("auc", 0.0) > t.mlperf_auc_threshold:
        return "AUC"
    return ""
