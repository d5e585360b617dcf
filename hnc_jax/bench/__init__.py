"""Benchmarks, never timed tests: `python -m hnc_jax.bench {step,startup,input,resume,aot}`
(see `cli`)."""
