"""The resume benchmark's measurement, in process on a small set (its figures are not tested:
they live in docs/benchmarks.md, from `python -m hnc_jax.bench resume`)."""

import pytest

from hnc_jax.bench import cli, resume


def test_measure_counts_the_records_a_resume_reads(tmp_path):
    resume.prepare("numbered_images/n2000", str(tmp_path), files=8)
    config = resume.bench_config("numbered_images/n2000", str(tmp_path), 256, 16)
    result = resume.measure(config, step_ms=0, after=1)
    assert result["records"] == 2000 and result["resume_step"] == 62
    assert result["records_before_resume"] == 992
    # Record 992 is in block 3 (records 768-1023), which must be read whole before its first
    # batch; re-reading the epoch up to the resume would be 992 + 256 records.
    assert 256 <= result["records_read"] < 992 + 256
    assert result["mb_read"] > 0 and len(result["boundary_ms"]) == 2


def test_bad_flags_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        cli.main(["resume", "--buffer=0"])
    assert "--buffer must be >= 1, got 0" in capsys.readouterr().err


def test_grain_resume_reads_only_the_batches_it_yields_and_reads_ahead(tmp_path):
    resume.prepare("numbered_images/n2000", str(tmp_path), files=8, file_format="array_record")
    config = resume.bench_config("numbered_images/n2000", str(tmp_path), 256, 16, "grain")
    config.grain_read_threads, config.grain_prefetch = 1, 1  # One batch read ahead at most.
    result = resume.measure(config, step_ms=0, after=1)
    assert result["resume_step"] == 62 and 16 <= result["records_read"] <= 3 * 16
