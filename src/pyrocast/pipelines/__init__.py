"""ZenML pipelines: thin steps over the data and model functions."""
