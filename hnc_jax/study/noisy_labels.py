"""CE vs HNC under label noise: the study's protocol (`sweep`) on the default data with noisy
training labels, one sweep per noise setting, and the summary over them.

    nohup nice -n 15 python -m hnc_jax.study.noisy_labels --workdir=workdir/study/noisy \
        >workdir/study/noisy.log 2>&1 &
    python -m hnc_jax.study.noisy_labels --workdir=workdir/study/noisy --report_only

Each setting is a config (`configs/noisy_labels_*.py`): symmetric noise at 0.2 and 0.4, the
asymmetric digit flips at 0.3. Its validation split has the same noise as its training split
(all a user with noisy data could select on); its test split is clean. Per setting, the sweep
tries cross-entropy, HNC-mse at `MSE_WEIGHTS` and HNC-kd at `KD_WEIGHTS` (k=3, one seed), the
2-epoch weight warm-up at each loss's best weight and the next larger, then trains each
loss's selected setting with 5 seeds on the train split and scores it on test. Each sweep
keeps its own `<workdir>/<setting>/results.jsonl` and report; this module adds
`<workdir>/report.md` (the test results of every setting, with the clean data's: the default
study's test models as `docs/study/robustness.jsonl` records them, MaxBoxAccV2 included) and
the figure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from hnc_jax.study import design, report, robustness, sweep

SETTINGS = {  # name -> configs/ module
    "symmetric_20": "noisy_labels_symmetric_20",
    "symmetric_40": "noisy_labels_symmetric_40",
    "asymmetric_30": "noisy_labels_asymmetric_30",
}
MSE_WEIGHTS, KD_WEIGHTS = "0.03,0.1", "0.003,0.01"


def sweep_args(name: str, workdir: str, seeds: int, tiny: dict) -> list[str]:
    """The command line of setting `name`'s sweep."""
    args = [f"--workdir={epath.Path(workdir) / name}", f"--config={SETTINGS[name]}",
            f"--mse_weights={MSE_WEIGHTS}", f"--kd_weights={KD_WEIGHTS}", "--val_seeds=1",
            "--k_values=", "--warmups=2", f"--test_seeds={seeds}"]  # fmt: skip
    return args + [f"--{field}={value}" for field, value in tiny.items()]


def test_records(workdir: str) -> dict[str, list[dict]]:
    """{setting: its test-stage records}, 'clean' first: the default study's test models as the
    robustness study retrained them (its records bit for bit, plus MaxBoxAccV2)."""
    lines = (robustness.RECORDS / "robustness.jsonl").read_text().splitlines()
    out = {"clean": [r for r in map(json.loads, lines) if r["data"] == "default"]}
    for name in SETTINGS:
        records = design.load_results(str(epath.Path(workdir) / name)).values()
        out[name] = [r for r in records if r["phase"] == "test"]
    return out


def summary(groups: dict[str, list[dict]]) -> str:
    """Markdown: per setting and loss, test top-1 and MaxBoxAcc(V2) with differences to CE."""
    keys = ("top1", "max_box_acc", "max_box_acc_v2")
    header = ["labels", "loss", "setting", "seeds", *(report.TITLES[k] for k in keys)]
    header += [f"Δ{report.TITLES[k]} vs CE [95% CI], Welch p" for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, records in groups.items():
        by_loss: dict[str, list[dict]] = {}
        for r in records:
            by_loss.setdefault(r["loss"], []).append(r)
        ce = by_loss.get("none", [])
        for loss in (loss for loss in report.LABELS if loss in by_loss):
            rs = by_loss[loss]
            cells = [name, report.LABELS[loss], report.setting_text(design.record_setting(rs[0])),
                     str(len(rs))]  # fmt: skip
            for k in keys:
                cells.append(report.mean_std([r[k] for r in rs], k) if k in rs[0] else "n/a")
            for k in keys:
                comparable = loss != "none" and ce and k in rs[0] and k in ce[0]
                values = ([r[k] for r in rs], [r[k] for r in ce]) if comparable else None
                cells.append(report.diff_text(report.compare(*values), k) if values else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(groups: dict[str, list[dict]]) -> Figure:
    """Test top-1 per labels setting, one marker per seed and a line through each loss's means."""
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.subplots()
    names = [n for n, rs in groups.items() if rs]
    for i, loss in enumerate(report.LABELS):
        means = []
        for x, name in enumerate(names):
            ys = [100 * r["top1"] for r in groups[name] if r["loss"] == loss]
            ax.plot([x + 0.1 * (i - 1)] * len(ys), ys, "o", color=f"C{i}", ms=3, alpha=0.6)
            means.append(np.mean(ys) if ys else np.nan)
        ax.plot(np.arange(len(names)) + 0.1 * (i - 1), means, "-", color=f"C{i}",
                label=report.LABELS[loss])  # fmt: skip
    ax.set_xticks(range(len(names)), [n.replace("_", " 0.") for n in names])
    ax.set(xlabel="training labels", ylabel="test top-1 % (clean test labels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="one sweep workdir per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=", ".join(SETTINGS))
    parser.add_argument("--seeds", type=int, default=5, help="test seeds per loss")
    sweep.add_tiny_flags(parser)
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--figure", default=None, help="default: <workdir>/noisy_labels.png")
    args = parser.parse_args(argv)
    names = [n for n in args.settings.split(",") if n]
    if unknown := [n for n in names if n not in SETTINGS]:
        parser.error(f"unknown --settings {unknown}; allowed: {', '.join(SETTINGS)}")
    tiny = sweep.tiny_overrides(args)
    for name in names:
        if not args.report_only:
            sweep.main(sweep_args(name, args.workdir, args.seeds, tiny))
        elif (epath.Path(args.workdir) / name).exists():
            sweep.main([*sweep_args(name, args.workdir, args.seeds, tiny), "--report_only"])
    groups = test_records(args.workdir)
    text = summary(groups)
    report.publish(args.workdir, text, figure(groups), args.figure, "noisy_labels.png")
    print(text)
    return groups


if __name__ == "__main__":
    main()
