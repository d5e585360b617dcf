"""The CE-vs-HNC study: its plan (stages, selection on validation), run configs, statistics,
tables, a results file that survives kills, and a tiny end-to-end study that resumes."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from configs import cluttered_digits_hard, cluttered_digits_multi, default
from hnc_jax.study import design, report, sweep
from hnc_jax.study.design import Run, Setting

REPO = Path(__file__).parents[1]
PLAN = design.Plan(weights={"mse": (0.01, 0.1), "kd": (0.001, 0.01)}, k=3, k_values=(1,),
                  warmups=(2.0,), val_seeds=2, test_seeds=3)  # fmt: skip


def _finish(results, runs, score):
    for run in runs:
        s = run.setting
        results[run.name] = {
            "name": run.name, "phase": run.phase, "loss": s.loss, "weight": s.weight,
            "k": s.k, "warmup": s.warmup, "seed": run.seed, "top1": score(run),
            "max_box_acc": 0.5, "seconds": 10.0,
        }  # fmt: skip


def test_plan_selects_on_validation_then_tests():
    results = {}
    grid = design.next_runs(results, PLAN)
    # Stage 1, seed-major: every setting's seed 0 before any seed 1.
    assert [r.seed for r in grid] == [0] * 5 + [1] * 5
    assert {r.setting for r in grid} == {
        Setting("none", 0.0, 3), Setting("mse", 0.01), Setting("mse", 0.1),
        Setting("kd", 0.001), Setting("kd", 0.01),
    }  # fmt: skip
    assert all(r.phase == "val" for r in grid)
    best_grid = {"mse": 0.1, "kd": 0.001}
    _finish(results, grid[:7], lambda r: 0.9)
    assert design.next_runs(results, PLAN) == grid[7:]  # Unfinished runs only.
    _finish(
        results,
        grid[7:],
        lambda r: 0.9 + 0.05 * (best_grid.get(r.setting.loss) == r.setting.weight),
    )
    variants = design.next_runs(results, PLAN)
    # Warm-ups at the best weight and the next larger one (none above mse's 0.1).
    assert {r.setting for r in variants} == {
        Setting("mse", 0.1, 1), Setting("mse", 0.1, 3, 2.0),
        Setting("kd", 0.001, 1), Setting("kd", 0.001, 3, 2.0), Setting("kd", 0.01, 3, 2.0),
    }  # fmt: skip
    # k=1 wins for mse (by validation top-1), the grid setting stays best for kd.
    _finish(results, variants, lambda r: 0.99 if r.setting == Setting("mse", 0.1, 1) else 0.91)
    final = design.next_runs(results, PLAN)
    tests = [r for r in final if r.phase == "test"]
    assert {r.setting for r in tests} == {
        Setting("none", 0.0, 3), Setting("mse", 0.1, 1), Setting("kd", 0.001, 3)
    }  # fmt: skip
    assert sorted({r.seed for r in tests}) == [0, 1, 2]
    assert {r.name for r in final if r.phase == "grid_test"} == {
        r.name.replace("val/", "grid_test/") for r in grid
    }
    _finish(results, final, lambda r: 0.9)
    assert design.next_runs(results, PLAN) == []


def test_run_config_phases():
    base = default.get_config()
    setting = Setting("kd", 0.003, 1, 2.0)
    val = sweep.run_config(base, Run("val", setting, 4), PLAN)
    assert (val.train_split, val.eval_split) == ("train_fit", "validation")
    assert (val.hnc.loss, val.hnc.weight, val.hnc.k, val.hnc.weight_warmup_epochs, val.seed) == (
        "kd",
        0.003,
        1,
        2.0,
        4,
    )
    assert val.eval_every_steps == val.checkpoint_every_steps == sweep.NEVER
    assert val.num_train_steps == -1 and val.image_panel_examples == 0
    grid_test = sweep.run_config(base, Run("grid_test", setting, 4), PLAN)
    assert (grid_test.train_split, grid_test.eval_split) == ("train_fit", "test")
    test = sweep.run_config(base, Run("test", Setting("none"), 0), PLAN)
    assert (test.train_split, test.eval_split, test.hnc.loss) == ("train", "test", "none")
    assert Run("grid_test", setting, 4).workdir_name == "val/kd-w0.003-k1-wu2-s4"
    assert base.hnc.loss == "mse"  # Not modified.
    # The harder config warms its HNC weight up; a setting without warm-up has none.
    hard = sweep.run_config(cluttered_digits_hard.get_config(), Run("val", Setting("kd"), 0), PLAN)
    assert hard.hnc.weight_warmup_epochs == 0.0


def test_compare_against_welch_formula():
    a, b = [0.91, 0.95, 0.93, 0.97, 0.92], [0.96, 0.97, 0.98]
    out = report.compare(a, b)
    assert out["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    # Welch's t and the Welch-Satterthwaite degrees of freedom, by hand.
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert out["p"] == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert out["lo"] < out["diff"] < out["hi"] < 0  # b is better in every resample but few.
    same = report.compare([0.5, 0.5], [0.5, 0.5])
    assert same["diff"] == same["lo"] == same["hi"] == 0.0 and np.isnan(same["p"])


def test_tables():
    results = {}
    runs = [Run(p, s, seed) for p in ("val", "test") for seed in range(3)
            for s in (Setting("none"), Setting("mse", 0.1, 3))]  # fmt: skip
    _finish(results, runs, lambda r: 0.9 + 0.01 * r.seed - 0.05 * (r.setting.loss == "mse"))
    val = report.validation_table(results).splitlines()
    assert val[0].startswith("| loss | setting | seeds | top-1 | MaxBoxAcc |")
    assert val[2] == "| cross-entropy | - | 3 | 91.0 ± 1.0 | 50.0 ± 0.0 | 90.0 |"
    assert val[3] == "| HNC-mse | w=0.1, k=3 | 3 | 86.0 ± 1.0 | 50.0 ± 0.0 | 85.0 |"
    test = report.final_table(results).splitlines()
    assert test[3].startswith("| HNC-mse | w=0.1, k=3 | 3 | 86.0 ± 1.0 | 50.0 ± 0.0 | -5.0 [")
    assert test[3].endswith("| +0.0 [+0.0, +0.0], p=n/a |")


def test_bad_arguments(tmp_path):
    args = ["--workdir", str(tmp_path)]
    with pytest.raises(ValueError, match="need weights > 0"):
        sweep.main([*args, "--mse_weights=0,0.1"])
    with pytest.raises(ValueError, match="for at least one loss"):
        sweep.main([*args, "--mse_weights=", "--kd_weights="])
    with pytest.raises(ValueError, match="seeds >= 1"):
        sweep.main([*args, "--val_seeds=0"])
    with pytest.raises(ValueError, match="k >= 1"):
        sweep.main([*args, "--k=0"])


def test_committed_multi_label_study_selects_the_configs_setting(tmp_path):
    """docs/study/multi.jsonl is the finished study of docs/study.md's command (its grid at k=3,
    which --k keeps now that the config trains the selected k=1), and the config trains the
    HNC-mse setting it selects on validation."""
    (tmp_path / design.RESULTS).write_text((REPO / "docs/study/multi.jsonl").read_text())
    args = [
        "--config=cluttered_digits_multi",
        "--workdir",
        str(tmp_path),
        "--k=3",
        "--mse_weights=0.001,0.003,0.01,0.03",
        "--kd_weights=0.0001,0.0003,0.001,0.003",
    ]
    results = sweep.main([*args, "--report_only", f"--figure={tmp_path / 'figure.png'}"])
    plan = sweep.plan_of(sweep.parse_args(args), cluttered_digits_multi.get_config())
    assert len(results) == 87 and design.next_runs(results, plan) == []
    hnc = cluttered_digits_multi.get_config().hnc
    selected = design.best_settings(results, plan)
    assert selected["mse"] == Setting("mse", hnc.weight, hnc.k)
    assert selected["kd"] == Setting("kd", 0.0003, 1)
    assert "| HNC-mse | w=0.003, k=1 | 5 |" in (tmp_path / "report.md").read_text()


def _strict_records(workdir: Path) -> list[int]:
    """The `i` of every line of the results file, each of which must be a whole JSON record."""
    text = (workdir / design.RESULTS).read_text()
    assert text.endswith("\n")
    return [json.loads(line)["i"] for line in text.splitlines()]


def _python(code: str, *args: str) -> subprocess.Popen:
    """Runs `code` in a new Python process that imports this checkout; its stdout piped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            text=True, stdout=subprocess.PIPE)  # fmt: skip


# Appends ~50 KB records in a loop, printing each index once its append has returned.
_APPENDER = """
    import sys
    from hnc_jax.study import design
    for i in range(10**6):
        design.append_record(sys.argv[1], {"name": f"r{i}", "i": i, "pad": "x" * 50_000})
        print(i, flush=True)
"""


def test_results_survive_sigkill_while_appending(tmp_path):
    """A process killed (SIGKILL) at arbitrary points while appending leaves every record it
    finished, whole and in order: the file is replaced, never rewritten in place. Each kill
    comes after its delay, or at the worst moment if there is one: as soon as the file is seen
    shrinking (a rewrite in place under way, which a replace never shows)."""
    for attempt, delay in enumerate((0.0, 0.05, 0.15, 0.3, 0.6)):
        workdir = tmp_path / str(attempt)
        workdir.mkdir()
        child = _python(_APPENDER, str(workdir))
        done = [child.stdout.readline() for _ in range(3)]  # Started: a few records in.
        size, deadline = 0, time.monotonic() + delay
        while (
            time.monotonic() < deadline
            and (now := os.stat(workdir / design.RESULTS).st_size) >= size
        ):
            size = now
        child.send_signal(signal.SIGKILL)
        done += child.stdout.readlines()
        assert child.wait() == -signal.SIGKILL
        records = _strict_records(workdir)
        # Every finished append, and perhaps the one killed between its replace and its print.
        assert records == list(range(len(records))), records
        assert len(records) - len(done) in (0, 1), (len(records), len(done))
        assert set(design.load_results(str(workdir))) == {f"r{i}" for i in records}
        # At most the kill's temporary file beside it; the study continues from there.
        others = [p.name for p in workdir.iterdir() if p.name != design.RESULTS]
        assert len(others) <= 1 and all(n.startswith(".results.jsonl.") for n in others)
        design.append_record(str(workdir), {"name": "next", "i": len(records)})
        assert _strict_records(workdir) == list(range(len(records) + 1))


def test_results_survive_a_failed_write(tmp_path):
    """A write that fails part way (the file size limit, as a full disk would) leaves the
    results file as it was, and no temporary file."""
    for i in range(3):
        design.append_record(str(tmp_path), {"name": f"r{i}", "i": i})
    before = (tmp_path / design.RESULTS).read_text()
    child = _python(
        """
        import resource, signal, sys
        from hnc_jax.study import design
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, an OSError, instead.
        limit = int(sys.argv[2])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            design.append_record(sys.argv[1], {"name": "big", "i": 3, "pad": "x" * 10_000})
        except OSError as error:
            print(error.errno)
        """,
        str(tmp_path),
        str(len(before) + 100),  # Room for the old records and part of the new one.
    )
    assert child.communicate()[0].strip() == "27" and child.returncode == 0  # EFBIG.
    assert (tmp_path / design.RESULTS).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [design.RESULTS]


def test_torn_last_line_is_skipped_and_corrupt_lines_raise(tmp_path, caplog):
    lines = [json.dumps({"name": f"r{i}", "i": i}) for i in range(3)]
    path = tmp_path / design.RESULTS
    path.write_text("\n".join(lines) + "\n" + lines[0][:9])  # An older version's torn write.
    with caplog.at_level(logging.WARNING):
        assert list(design.load_results(str(tmp_path))) == ["r0", "r1", "r2"]
    assert f"{path}: line 4 is torn" in caplog.text
    # The next append drops the torn line, so it never ends up mid-file.
    design.append_record(str(tmp_path), {"name": "r3", "i": 3})
    assert _strict_records(tmp_path) == [0, 1, 2, 3]
    # A whole last record without its newline is kept.
    path.write_text("\n".join(lines))
    design.append_record(str(tmp_path), {"name": "r3", "i": 3})
    assert _strict_records(tmp_path) == [0, 1, 2, 3]
    # Only the last line can be torn: one before it is a corrupt file.
    path.write_text("\n".join([lines[0], lines[1][:9], lines[2]]) + "\n\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2 is not a JSON record")):
        design.load_results(str(tmp_path))
    with pytest.raises(ValueError, match="line 2"):
        design.append_record(str(tmp_path), {"name": "r3", "i": 3})


def test_results_append_on_gs(gcs_emulator, gcs_bucket):
    """On gs:// too (epath's replace: a copy, then a delete): no temporary object stays."""
    workdir = f"{gcs_bucket}/study"
    for i in range(3):
        design.append_record(workdir, {"name": f"r{i}", "i": i})
    assert list(design.load_results(workdir)) == ["r0", "r1", "r2"]
    assert gcs_emulator.list_objects(gcs_bucket.removeprefix("gs://")) == ["study/results.jsonl"]


@pytest.mark.slow
def test_tiny_study_runs_and_resumes(tmp_path):
    workdir = tmp_path / "study"
    args = ["--workdir", str(workdir), "--mse_weights=0.1", "--kd_weights=", "--k_values=3",
            "--warmups=", "--val_seeds=1", "--test_seeds=1", "--fit_split=train_fit[:64]",
            "--val_split=validation[:32]", "--train_split=train[:64]", "--test_split=test[:32]",
            "--batch_size=16", "--eval_batch_size=32", "--num_train_steps=2"]  # fmt: skip
    results = sweep.main(args)
    assert sorted(results) == [
        "grid_test/mse-w0.1-k3-wu0-s0", "grid_test/none-s0", "test/mse-w0.1-k3-wu0-s0",
        "test/none-s0", "val/mse-w0.1-k3-wu0-s0", "val/none-s0",
    ]  # fmt: skip
    for record in results.values():
        for key in ("top1", "gt_known_loc", "top1_loc", "max_box_acc", "peak_on_clutter"):
            assert 0.0 <= record[key] <= 1.0
        assert record["num_posi"] <= 9 * 6 * 6 and record["steps"] == 2
    val = results["val/none-s0"]
    assert (val["train_split"], val["eval_split"]) == ("train_fit[:64]", "validation[:32]")
    assert val["top1"] == pytest.approx(val["eval_top1"])  # Two evaluations, one model.
    grid = results["grid_test/mse-w0.1-k3-wu0-s0"]
    assert (grid["train_split"], grid["eval_split"]) == ("train_fit[:64]", "test[:32]")
    assert (workdir / "report.md").exists() and (workdir / "hnc_sweep.png").exists()
    # A restart trains nothing and changes nothing.
    lines = (workdir / design.RESULTS).read_text()
    assert sweep.main(args) == results and (workdir / design.RESULTS).read_text() == lines
    assert json.loads(lines.splitlines()[0])["name"] == "val/none-s0"
    # A run that stopped early (SIGTERM saves and returns) is never measured as finished.
    plan = design.Plan(fit_split="train_fit[:64]", val_split="validation[:32]")
    config = sweep.run_config(default.get_config(), Run("val", Setting("none"), 0), plan)
    config.batch_size, config.eval_batch_size, config.num_train_steps = 16, 32, 3
    with pytest.raises(RuntimeError, match="stopped at step 2 of 3"):
        sweep.measure(config, str(workdir / "val" / "none-s0"))
