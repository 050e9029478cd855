"""Features to a model: the train orchestrator as named stages (train) and their parts
(backbone_ref, extraction, views, save, summary), the numpy heads (head), fine-tuning (finetune,
finetune_inputs), the --time-limit planner (plan), metrics (evaluation), the auto choices (choices)."""
