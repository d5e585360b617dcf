"""The study's report: validation and test tables with the difference to cross-entropy, and the
figure (`docs/hnc_sweep.png`), from the records of `hnc_jax.study.sweep` (results.jsonl).

Differences to cross-entropy are over seeds: the mean difference, its 95% bootstrap interval
(each group's seeds resampled with replacement, `BOOTSTRAP` times, fixed seed) and Welch's t
test's two-sided p (`scipy.stats.ttest_ind(equal_var=False)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from etils import epath
from matplotlib.figure import Figure
from scipy import stats

from hnc_jax import figures
from hnc_jax.study import design

BOOTSTRAP = 10_000
LABELS = {"none": "cross-entropy", "mse": "HNC-mse", "kd": "HNC-kd"}
PERCENT = {"top1", "mAP", "f1", "max_box_acc", "max_box_acc_v2", "gt_known_loc", "top1_loc",
           "peak_on_clutter"}  # fmt: skip
TITLES = {
    "top1": "top-1", "mAP": "mAP", "f1": "F1", "max_box_acc": "MaxBoxAcc",
    "max_box_acc_v2": "MaxBoxAccV2", "gt_known_loc": "GT-known loc", "top1_loc": "top-1 loc",
    "neg_peak": "neg-CAM peak",
    "num_posi": "num_posi", "peak_on_clutter": "neg peak on clutter",
}  # fmt: skip


def compare(values: Sequence[float], baseline: Sequence[float], seed: int = 0) -> dict:
    """Mean difference `values - baseline`, its 95% bootstrap interval and Welch's p (nan
    with fewer than 2 values a side or no spread)."""
    a, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    rng = np.random.default_rng(seed)
    boot = rng.choice(a, (BOOTSTRAP, len(a))).mean(1) - rng.choice(b, (BOOTSTRAP, len(b))).mean(1)
    p = np.nan
    if min(len(a), len(b)) > 1 and (a.std() > 0 or b.std() > 0):
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "p": p}


def mean_std(values: Sequence[float], key: str) -> str:
    scale = 100.0 if key in PERCENT else 1.0
    digits = 2 if key == "neg_peak" else 1
    values = np.asarray(values, np.float64) * scale
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def diff_text(c: dict, key: str) -> str:
    scale = 100.0 if key in PERCENT else 1.0
    p = "n/a" if np.isnan(c["p"]) else f"{c['p']:.2g}"
    return f"{c['diff'] * scale:+.1f} [{c['lo'] * scale:+.1f}, {c['hi'] * scale:+.1f}], p={p}"


def setting_text(s: design.Setting) -> str:
    if s.loss == "none":
        return "-"
    return f"w={s.weight:g}, k={s.k}" + (f", warm-up {s.warmup:g} ep" if s.warmup else "")


def _groups(results: dict[str, dict], phase: str) -> dict[design.Setting, list[dict]]:
    out: dict[design.Setting, list[dict]] = {}
    for record in results.values():
        if record["phase"] == phase:
            out.setdefault(design.record_setting(record), []).append(record)
    return out


def _columns(groups: dict[design.Setting, list[dict]]) -> tuple[str, list[str]]:
    """The main metric and the columns every record of `groups` has, main first."""
    records = [r for rs in groups.values() for r in rs]
    main = design.primary_metric(records)
    keys = [main, "f1", "top1", "max_box_acc", "max_box_acc_v2", "gt_known_loc", "top1_loc",
            "neg_peak", "num_posi", "peak_on_clutter"]  # fmt: skip
    return main, [k for k in dict.fromkeys(keys) if all(k in r for r in records)]


def validation_table(results: dict[str, dict]) -> str:
    """Markdown: one row per validation setting (mean ± std over its finished seeds)."""
    groups = _groups(results, "val")
    if not groups:
        return "(no validation run finished yet)\n"
    main, keys = _columns(groups)
    lines = [
        "| loss | setting | seeds | "
        + " | ".join(TITLES[k] for k in keys)
        + f" | min {TITLES[main]} |",
        "|" + "---|" * (len(keys) + 4),
    ]
    order = sorted(groups, key=lambda s: (list(LABELS).index(s.loss), s.weight, -s.k, s.warmup))
    for s in order:
        rs = groups[s]
        cells = [mean_std([r[k] for r in rs], k) for k in keys]
        low = 100 * min(r[main] for r in rs)
        lines.append(f"| {LABELS[s.loss]} | {setting_text(s)} | {len(rs)} | " + " | ".join(cells)
                     + f" | {low:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def final_table(results: dict[str, dict]) -> str:
    """Markdown: one row per tested loss; the main metric, MaxBoxAcc and MaxBoxAccV2 (when
    there) with their difference to cross-entropy."""
    groups = _groups(results, "test")
    if not groups:
        return "(no test run finished yet)\n"
    main, keys = _columns(groups)
    judged = [k for k in (main, "max_box_acc", "max_box_acc_v2") if k in keys]
    ce = next((rs for s, rs in groups.items() if s.loss == "none"), None)
    header = ["loss", "setting", "seeds", *(TITLES[k] for k in keys)]
    header += [f"Δ{TITLES[k]} vs CE [95% CI], Welch p" for k in judged]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in sorted(groups, key=lambda s: list(LABELS).index(s.loss)):
        rs = groups[s]
        cells = [LABELS[s.loss], setting_text(s), str(len(rs))]
        cells += [mean_std([r[k] for r in rs], k) for k in keys]
        for k in judged:
            same = ce is None or s.loss == "none"
            cells.append(
                "-" if same else diff_text(compare([r[k] for r in rs], [r[k] for r in ce]), k)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_figure(results: dict[str, dict], plan: design.Plan) -> Figure:
    """Main metric and MaxBoxAcc against the weight for each HNC loss (k = plan.k): the grid's
    models (seeds as points, means joined) scored on test (`grid_test`; validation until that
    is done), the cross-entropy band (mean ± std of the same runs), and the final runs of the
    selected settings (train split, more seeds) with their cross-entropy mean."""
    grid = "grid_test" if any(r["phase"] == "grid_test" for r in results.values()) else "val"
    records = [r for r in results.values() if r["phase"] in (grid, "test")]
    main = design.primary_metric(records)
    keys = [k for k in (main, "max_box_acc") if records and all(k in r for r in records)]
    losses = list(plan.weights)
    fig = Figure(figsize=(4.2 * len(losses), 3.0 * max(len(keys), 1)), dpi=100)
    axes = fig.subplots(max(len(keys), 1), len(losses), squeeze=False)
    split = "test" if grid == "grid_test" else "validation"
    for row, key in enumerate(keys):
        scale = 100.0 if key in PERCENT else 1.0
        for col, loss in enumerate(losses):
            ax = axes[row, col]
            ce = [scale * r[key] for r in records if r["phase"] == grid and r["loss"] == "none"]
            if ce:
                m, sd = np.mean(ce), np.std(ce, ddof=1) if len(ce) > 1 else 0.0
                ax.axhspan(m - sd, m + sd, color="0.8", label=f"CE, fit split (n={len(ce)})")
                ax.axhline(m, color="0.5", lw=1)
            mine = [r for r in records if r["phase"] == grid and r["loss"] == loss
                    and r["k"] == plan.k and not r["warmup"]]  # fmt: skip
            weights = sorted({r["weight"] for r in mine})
            for w in weights:
                ys = [scale * r[key] for r in mine if r["weight"] == w]
                ax.plot([w] * len(ys), ys, "o", color="C0", ms=4, alpha=0.7)
            means = [np.mean([scale * r[key] for r in mine if r["weight"] == w]) for w in weights]
            ax.plot(weights, means, "-", color="C0", label=f"{LABELS[loss]}, fit split, k={plan.k}")
            final = [r for r in records if r["phase"] == "test" and r["loss"] == loss]
            if final:
                label = f"selected, train split (n={len(final)})"
                ys = [scale * r[key] for r in final]
                ax.plot([r["weight"] for r in final], ys, "D", color="C3", ms=5, label=label)
            ce_final = [scale * r[key] for r in records if r["phase"] == "test"
                        and r["loss"] == "none"]  # fmt: skip
            if ce_final:
                ax.axhline(np.mean(ce_final), color="C3", ls="--", lw=1, label="CE, train split")
            ax.set_xscale("log")
            ax.set(xlabel=f"{LABELS[loss]} weight", ylabel=f"{split} {TITLES[key]}"
                   + (" %" if scale == 100 else ""))  # fmt: skip
            ax.grid(alpha=0.3)
            if row == 0:
                ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def write_report(
    results: dict[str, dict], plan: design.Plan, workdir: str, figure: str | None = None
) -> str:
    """Writes `<workdir>/report.md` (selection, tables, compute) and the figure
    (`figure`, default `<workdir>/hnc_sweep.png`); returns the markdown."""
    parts = ["## Validation (fit split -> validation split)\n", validation_table(results)]
    if all(r["phase"] != "test" for r in results.values()) and results:
        parts.append("\n(selection happens when the validation stages are complete)\n")
    parts += ["\n## Test (selected settings, train split -> test split)\n", final_table(results)]
    hours = sum(r.get("seconds", 0.0) for r in results.values()) / 3600
    parts.append(f"\n{len(results)} finished runs, {hours:.2f} h of wall clock in total.\n")
    text = "".join(parts)
    publish(workdir, text, sweep_figure(results, plan), figure, "hnc_sweep.png")
    return text


def publish(workdir: str, text: str, fig: Figure, figure: str | None, name: str) -> None:
    """Writes `<workdir>/report.md` and the figure to `figure` (None: `<workdir>/<name>`)."""
    (epath.Path(workdir) / "report.md").write_text(text)
    figures.save_png(fig, figure or epath.Path(workdir) / name)
