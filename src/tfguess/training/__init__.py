"""Features to a model: the train orchestrator as named stages (train) and their parts
(backbone_ref, extraction, views, save, summary), the numpy heads (head), fine-tuning (finetune,
finetune_inputs) and its refit on the held-out photos (refit), the time planner (plan) and
this machine's throughput (throughput), metrics (evaluation), the choices made on the photos
(choices), the re-run that does nothing (unchanged)."""
