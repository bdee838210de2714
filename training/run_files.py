"""The names of a run's files beside its checkpoints in train.save_dir, written by rank 0 at every start
(training.checkpoint.write_run_files): the run config with what validation derived ("resolved": the model
config and the precision), and the filled DeepSpeed JSON. Export, evaluation and codeparrot-plot read
them; this module imports nothing, so a tool that only reads them starts without torch. METRICS is rank
0's record of the run (training.metrics.MetricsWriter), one JSON line per logged step or event."""

RUN_CONFIG = "run_config.json"
DS_CONFIG = "ds_config.json"
METRICS = "metrics.jsonl"
