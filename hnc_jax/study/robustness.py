"""Adversarial robustness of CE vs HNC: the CE-vs-HNC study's selected settings retrained
(train split, its seeds) and attacked with FGSM and PGD on the test split.

    nohup nice -n 15 python -m hnc_jax.study.robustness --workdir=workdir/study/robustness \
        >workdir/study/robustness.log 2>&1 &
    python -m hnc_jax.study.robustness --workdir=workdir/study/robustness --report_only

For each data (`--data`: default, hard) the settings are those the study selected on
validation, read from its committed records (`docs/study/<data>.jsonl`, the `test` runs):
cross-entropy, HNC-mse and HNC-kd, each trained with seeds 0..`--seeds`-1 exactly as the
study's test stage trained them (`sweep.run_config`). Each model is scored as the study
scores it (`cam.evaluate_cams`: top-1, MaxBoxAcc, MaxBoxAccV2, ...) and attacked
(`attacks.attack_checkpoint`) at every epsilon. One JSON line per model in
`<workdir>/results.jsonl` (`design.append_record`: a kill tears nothing); a restart skips the
finished ones and resumes the one in progress from its checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from hnc_jax.study import design, report, sweep

DATA = {"default": "default", "hard": "cluttered_digits_hard"}  # name -> configs/ module
RECORDS = epath.Path(__file__).resolve().parents[2] / "docs" / "study"
EPSILONS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
KINDS = ("fgsm", "pgd")
MEAN = "mean over epsilon > 0"  # The tables' last row per attack.


def selected_settings(data: str, records_dir: epath.Path = RECORDS) -> list[design.Setting]:
    """The settings the study tested on `data` (its validation-selected ones), CE first."""
    lines = (records_dir / f"{data}.jsonl").read_text().splitlines()
    tested = {design.record_setting(r) for r in map(json.loads, lines) if r["phase"] == "test"}
    return sorted(tested, key=lambda s: list(report.LABELS).index(s.loss))


def planned_runs(data: Sequence[str], seeds: int) -> list[tuple[str, design.Run]]:
    """(data, run) of every model, seed-major within each data."""
    return [
        (name, design.Run("test", setting, seed))
        for name in data
        for seed in range(seeds)
        for setting in selected_settings(name)
    ]


def execute(name: str, run: design.Run, workdir: str, attack, overrides: dict) -> dict:
    """Trains (or resumes), scores and attacks one model; returns its record. `overrides`:
    config fields for tiny runs."""
    from hnc_jax.training import attacks  # Deferred: TensorFlow (only to run the study).

    base = importlib.import_module(f"configs.{DATA[name]}").get_config()
    base.update(overrides)
    data_dir = str(epath.Path(workdir) / name)
    record = sweep.execute(base, run, design.Plan(), data_dir)
    config = sweep.run_config(base, run, design.Plan())
    result = attacks.attack_checkpoint(config, str(epath.Path(data_dir) / run.workdir_name), attack)
    return {**record, "data": name, "name": f"{name}/{run.name}",
            **{kind: result[kind] for kind in attack.kinds}}  # fmt: skip


def _by_loss(records: list[dict], data: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        if r["data"] == data:
            out.setdefault(r["loss"], []).append(r)
    return dict(sorted(out.items(), key=lambda item: list(report.LABELS).index(item[0])))


def _top1(record: dict, kind: str, eps: str) -> float:
    """The model's top-1 under `kind` at `eps`, or (`MEAN`) averaged over every epsilon > 0:
    one robustness figure per model (the area under its curve, in tested-epsilon steps)."""
    if eps == MEAN:
        return float(np.mean([v for e, v in record[kind].items() if float(e) > 0]))
    return record[kind][eps]


def tables(records: list[dict]) -> str:
    """Markdown per data: clean top-1 and MaxBoxAccV2, then top-1 under each attack and
    epsilon and averaged over the epsilons > 0 (mean ± std over seeds), and each HNC loss's
    difference to cross-entropy with its 95% bootstrap interval and Welch's p
    (`report.compare`)."""
    parts = []
    for data in DATA:
        groups = _by_loss(records, data)
        if not groups:
            continue
        ce = groups.get("none")
        parts.append(f"### {data} data (test split)\n")
        header = "| loss | setting | seeds | top-1 | MaxBoxAccV2 | ΔMaxBoxAccV2 vs CE |"
        lines = [header, "|---|---|---|---|---|---|"]
        for loss, rs in groups.items():
            diff = "-"
            if ce and loss != "none":
                values = [[r["max_box_acc_v2"] for r in group] for group in (rs, ce)]
                diff = report.diff_text(report.compare(*values), "max_box_acc_v2")
            setting = report.setting_text(design.record_setting(rs[0]))
            top1, v2 = (report.mean_std([r[k] for r in rs], k) for k in ("top1", "max_box_acc_v2"))
            row = [report.LABELS[loss], setting, str(len(rs)), top1, v2, diff]
            lines.append("| " + " | ".join(row) + " |")
        epsilons = list(next(iter(groups.values()))[0]["pgd"])
        names = [report.LABELS[loss] for loss in groups]
        deltas = [f"Δ{report.LABELS[loss]} vs CE" for loss in groups if loss != "none"]
        lines += ["", "| attack | epsilon (of 255) | " + " | ".join(names + deltas) + " |"]
        lines.append("|---|---|" + "---|" * (2 * len(groups) - 1))
        for kind in KINDS:
            for eps in [*epsilons, MEAN]:
                cells = [
                    report.mean_std([_top1(r, kind, eps) for r in rs], "top1")
                    for rs in groups.values()
                ]
                for loss, rs in groups.items():
                    if loss != "none":
                        values = [[_top1(r, kind, eps) for r in group] for group in (rs, ce or rs)]
                        cells.append(report.diff_text(report.compare(*values), "top1"))
                lines.append(f"| {kind.upper()} | {eps} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n\n")
    return "".join(parts) or "(no model finished yet)\n"


def figure(records: list[dict]) -> Figure:
    """Top-1 against epsilon, one line per loss (mean, band: min-max over seeds); a row per
    data, a column per attack."""
    rows = [d for d in DATA if any(r["data"] == d for r in records)] or list(DATA)[:1]
    fig = Figure(figsize=(8.4, 3.0 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), len(KINDS), squeeze=False)
    for row, data in enumerate(rows):
        for col, kind in enumerate(KINDS):
            ax = axes[row, col]
            for i, (loss, rs) in enumerate(_by_loss(records, data).items()):
                eps = list(rs[0][kind])
                x = np.array([float(e) for e in eps])
                y = 100 * np.array([[r[kind][e] for e in eps] for r in rs])
                ax.plot(x, y.mean(0), "o-", color=f"C{i}", ms=3,
                        label=f"{report.LABELS[loss]} (n={len(rs)})")  # fmt: skip
                ax.fill_between(x, y.min(0), y.max(0), color=f"C{i}", alpha=0.2)
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set(xlabel="epsilon (of 255)", ylabel="test top-1 %",
                   title=f"{data} data, {kind.upper()}")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="results.jsonl and one dir per model")
    parser.add_argument("--data", default=",".join(DATA), help="default, hard")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    parser.add_argument("--pgd_steps", type=int, default=10)
    sweep.add_tiny_flags(parser)
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--figure", default=None, help="default: <workdir>/robustness.png")
    args = parser.parse_args(argv)
    data = [d for d in args.data.split(",") if d]
    if unknown := [d for d in data if d not in DATA]:
        parser.error(f"unknown --data {unknown}; allowed: {', '.join(DATA)}")
    if not args.report_only:
        from hnc_jax.training import attacks  # Deferred: TensorFlow.

        epsilons = tuple(float(e) for e in args.epsilons.split(","))
        attack = attacks.Attack(KINDS, epsilons, args.pgd_steps)
        epath.Path(args.workdir).mkdir(parents=True, exist_ok=True)
        for name, run in planned_runs(data, args.seeds):
            done = design.load_results(args.workdir)
            if f"{name}/{run.name}" in done:
                continue
            print(f"[{len(done)} done] {name}/{run.name}", flush=True)
            record = execute(name, run, args.workdir, attack, sweep.tiny_overrides(args))
            design.append_record(args.workdir, record)
            print(json.dumps(record), flush=True)
    records = list(design.load_results(args.workdir).values())
    text = tables(records)
    report.publish(args.workdir, text, figure(records), args.figure, "robustness.png")
    print(text)
    return records


if __name__ == "__main__":
    main()
