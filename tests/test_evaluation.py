"""Evaluation of a multi-label dataset: eval/mAP and eval/f1 against scikit-learn on the
model's own predictions (the single-label sums are tested in test_train_step.py)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from configs import cluttered_digits_multi
from hnc_jax.data import pipeline
from hnc_jax.training import evaluation, job


@pytest.mark.slow
def test_multi_label_eval_reports_map_and_f1(multi_digits):
    config = cluttered_digits_multi.get_config()
    config.model_width, config.compilation_cache_dir = 0.0625, None
    config.eval_split, config.eval_batch_size = "test[:40]", 16  # The last batch is padded.
    run = job.build(config)
    eval_step = evaluation.make_eval_step(run.model, run.mesh, multi_label=True)
    out = evaluation.evaluate(eval_step, run.state, run.dataset, config, run.mesh)
    batches = list(pipeline.eval_iterator(run.dataset, config))
    keep = np.concatenate([b["mask"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[keep]
    labels = np.concatenate([b["label"] for b in batches])[keep].astype(int)
    assert len(labels) == 40 and set(labels.sum(1)) <= {2, 3}
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    logits = np.asarray(run.model.apply(variables, images)[0])
    present = [c for c in range(10) if labels[:, c].any()]
    expected = np.mean([average_precision_score(labels[:, c], logits[:, c]) for c in present])
    assert out["eval/mAP"] == pytest.approx(expected, rel=1e-5)
    f1 = f1_score(labels, logits > 0, average="samples", zero_division=1.0)
    assert out["eval/f1"] == pytest.approx(f1, rel=1e-5)
    top1 = labels[np.arange(40), logits.argmax(-1)].mean()
    assert out["eval/top1"] == pytest.approx(top1)
