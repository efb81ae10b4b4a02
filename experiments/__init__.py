"""The domain app: teams, models, datasets, methods, experiments, runs and their measurements."""
