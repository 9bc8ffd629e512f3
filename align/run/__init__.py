"""Running a job: the config checked and parsed into a run spec, device facts and the decisions
that depend on them, the run folder, resuming, tracking, and the Hydra command line."""
