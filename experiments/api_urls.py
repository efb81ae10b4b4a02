"""The JSON API, mounted at /api/v1/."""

from django.urls import path

from experiments import api

urlpatterns = [
    path("experiments/", api.experiments, name="api_experiments"),
    path("experiments/<uuid:experiment_id>/", api.experiment, name="api_experiment"),
    path("experiments/<uuid:experiment_id>/measurements.csv", api.experiment_csv, name="api_experiment_csv"),
    path("runs/<uuid:run_id>/", api.run, name="api_run"),
    path("runs/<uuid:run_id>/cancel/", api.run_cancel, name="api_run_cancel"),
    path("runs/<uuid:run_id>/retry/", api.run_retry, name="api_run_retry"),
    path("runs/<uuid:run_id>/export/", api.run_export, name="api_run_export"),
    path("runs/<uuid:run_id>/export.zip", api.run_export_zip, name="api_run_export_zip"),
    path("leaderboard.csv", api.leaderboard_csv, name="api_leaderboard_csv"),
    path("models/", api.models, name="api_models"),
    path("datasets/", api.datasets, name="api_datasets"),
    path("methods/", api.methods, name="api_methods"),
]
