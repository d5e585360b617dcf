"""The study's design, without running anything: a loss setting, a run (phase, setting,
seed), the plan (grid and splits), which runs come next given the finished ones, the
validation-selected settings, and the records (`results.jsonl`) they are chosen from.
`sweep` runs the plan; `report` tables it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence

import numpy as np
from absl import logging
from etils import epath

RESULTS = "results.jsonl"


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a loss is trained with; cross-entropy is `Setting('none')`."""

    loss: str
    weight: float = 0.0
    k: int = 3
    warmup: float = 0.0  # hnc.weight_warmup_epochs

    @property
    def label(self) -> str:
        if self.loss == "none":
            return "none"
        return f"{self.loss}-w{self.weight:g}-k{self.k}-wu{self.warmup:g}"


@dataclasses.dataclass(frozen=True)
class Run:
    phase: str  # 'val' | 'test' | 'grid_test'
    setting: Setting
    seed: int

    @property
    def name(self) -> str:
        return f"{self.phase}/{self.setting.label}-s{self.seed}"

    @property
    def workdir_name(self) -> str:
        """grid_test scores the val run's model: same directory."""
        return Run("val", self.setting, self.seed).name if self.phase == "grid_test" else self.name


@dataclasses.dataclass(frozen=True)
class Plan:
    """The grid and the splits (the defaults are the study's)."""

    weights: dict[str, tuple[float, ...]] = dataclasses.field(
        default_factory=lambda: {"mse": (0.01, 0.03, 0.1, 0.3), "kd": (0.001, 0.003, 0.01, 0.03)}
    )
    k: int = 3
    k_values: tuple[int, ...] = (1,)
    warmups: tuple[float, ...] = (2.0,)  # Epochs; docs/study.md: the collapses.
    val_seeds: int = 3
    test_seeds: int = 5
    fit_split: str = "train_fit"
    val_split: str = "validation"
    train_split: str = "train"
    test_split: str = "test"


def record_setting(record: dict) -> Setting:
    return Setting(record["loss"], record["weight"], record["k"], record["warmup"])


def primary_metric(records: Sequence[dict]) -> str:
    """What settings are selected and judged by: 'mAP' (multi-label records), else 'top1'."""
    return "mAP" if any("mAP" in r for r in records) else "top1"


def _argmax(results: dict[str, dict], settings: Sequence[Setting], seeds: int) -> Setting:
    """The setting of best mean validation score over seeds 0..seeds-1 (the first on ties);
    all must be done."""
    key = primary_metric(list(results.values()))
    names = [[Run("val", s, seed).name for seed in range(seeds)] for s in settings]
    scores = [np.mean([results[n][key] for n in group]) for group in names]
    return settings[int(np.argmax(scores))]


def grid_settings(plan: Plan) -> list[Setting]:
    """Stage 1: cross-entropy, then each loss's weights at the plan's k."""
    hnc = [Setting(loss, w, plan.k) for loss, ws in plan.weights.items() for w in ws]
    return [Setting("none", 0.0, plan.k), *hnc]


def variant_settings(results: dict[str, dict], plan: Plan) -> list[Setting]:
    """Stage 2: each loss's best grid weight with the other k values; the warm-ups at that
    weight and at the next larger grid weight (where a warm-up may let a stronger HNC train)."""
    out = []
    for loss, weights in plan.weights.items():
        best = _argmax(results, [Setting(loss, w, plan.k) for w in weights], plan.val_seeds)
        out += [dataclasses.replace(best, k=k) for k in plan.k_values if k != plan.k]
        larger = sorted(w for w in weights if w > best.weight)[:1]
        out += [Setting(loss, w, plan.k, wu) for w in (best.weight, *larger)
                for wu in plan.warmups if wu > 0]  # fmt: skip
    return out


def best_settings(results: dict[str, dict], plan: Plan) -> dict[str, Setting]:
    """{loss: its best validation setting} over stages 1 and 2; cross-entropy included."""
    candidates = grid_settings(plan) + variant_settings(results, plan)
    return {
        loss: _argmax(results, [s for s in candidates if s.loss == loss], plan.val_seeds)
        for loss in ("none", *plan.weights)
    }


def _runs(phase: str, settings: Sequence[Setting], seeds: int) -> list[Run]:
    """Seed-major: every setting's seed 0 first, so a partial stage covers the whole grid."""
    return [Run(phase, s, seed) for seed in range(seeds) for s in settings]


def next_runs(results: dict[str, dict], plan: Plan) -> list[Run]:
    """The unfinished runs of the earliest unfinished stage ([] when the study is done)."""
    grid = _runs("val", grid_settings(plan), plan.val_seeds)
    todo = [r for r in grid if r.name not in results]
    if todo:
        return todo
    todo = [
        r
        for r in _runs("val", variant_settings(results, plan), plan.val_seeds)
        if r.name not in results
    ]
    if todo:
        return todo
    final = _runs("test", list(best_settings(results, plan).values()), plan.test_seeds)
    final += [Run("grid_test", r.setting, r.seed) for r in grid]
    return [r for r in final if r.name not in results]


def _read_records(path: epath.Path) -> tuple[list[dict], str]:
    """The records of results file `path` and the text that holds them: a torn (unparseable)
    last line, which only an interrupted write leaves, is dropped with a warning; an
    unparseable line before the last is a corrupt file (ValueError)."""
    lines = path.read_text().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines[: last + 1]):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if i < last:
                raise ValueError(
                    f"{path}: line {i + 1} is not a JSON record ({error}); only the last line "
                    "can be torn (an interrupted write): the file is corrupt"
                ) from error
            logging.warning(
                "%s: line %d is torn (an interrupted write), skipped: %s", path, i + 1, error
            )
            last -= 1  # Not kept: the next append would put it mid-file.
    return records, "".join(line + "\n" for line in lines[: last + 1])


def load_results(workdir: str) -> dict[str, dict]:
    """{run name: record} of every finished run in `workdir/results.jsonl` (a torn last line
    skipped with a warning)."""
    path = epath.Path(workdir) / RESULTS
    if not path.exists():
        return {}
    return {r["name"]: r for r in _read_records(path)[0]}


def append_record(workdir: str, record: dict) -> None:
    """Adds `record` as the last line of `workdir/results.jsonl` (created if missing), never
    tearing or losing the lines already there (a kill, a full disk): the whole new content is
    written to a temporary file beside it, which then replaces it. A torn last line (left by an
    older version's interrupted write) is dropped, so that it never ends up mid-file."""
    path = epath.Path(workdir) / RESULTS
    previous = _read_records(path)[1] if path.exists() else ""
    tmp = path.parent / f".{RESULTS}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(previous + json.dumps(record) + "\n")
        # Local disk: os.replace, atomic; killed before it, the old file is whole and at worst
        # a stray temporary file is left. gs://: epath (gfile) replaces by a server-side copy,
        # then deletes the temporary object; the copy replaces the object atomically, as a
        # direct write would (object stores have no append: the file is rewritten whole either
        # way). So one code path is right on both, for one extra request per finished run.
        tmp.replace(path)
    except BaseException:  # E.g. a full disk: no partial temporary file is left either.
        tmp.unlink(missing_ok=True)
        raise
