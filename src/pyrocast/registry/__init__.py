"""The model registry (MLflow): versions, aliases, lineage, model cards, the champion/challenger decision."""
