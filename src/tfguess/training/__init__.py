"""Features to a model: the train orchestrator, heads, fine-tuning, the planner, metrics, the choices."""
