"""The app's pages."""

from django.urls import path

from experiments import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("experiments/new/", views.experiment_new, name="experiment_new"),
    path("experiments/<uuid:experiment_id>/", views.experiment_detail, name="experiment_detail"),
    path("experiments/<uuid:experiment_id>/status/", views.experiment_status, name="experiment_status"),
    path("experiments/<uuid:experiment_id>/measurements.csv", views.experiment_csv, name="experiment_csv"),
    path("runs/<uuid:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<uuid:run_id>/retry/", views.run_retry, name="run_retry"),
    path("runs/<uuid:run_id>/export/", views.run_export, name="run_export"),
    path("runs/<uuid:run_id>/export.zip", views.run_export_zip, name="run_export_zip"),
    path("runs/<uuid:run_id>/spec.json", views.run_spec, name="run_spec"),
    path("models/", views.model_list, name="model_list"),
    path("models/new/", views.model_new, name="model_new"),
    path("models/<int:model_id>/", views.model_detail, name="model_detail"),
    path("datasets/", views.dataset_list, name="dataset_list"),
    path("datasets/new/", views.dataset_new, name="dataset_new"),
    path("datasets/<int:dataset_id>/", views.dataset_detail, name="dataset_detail"),
    path("datasets/<int:dataset_id>/haystack/", views.dataset_haystack, name="dataset_haystack"),
    path("methods/", views.method_list, name="method_list"),
    path("methods/<int:method_id>/", views.method_detail, name="method_detail"),
    path("methods/<int:method_id>/<str:which>_factor.csv", views.method_factors, name="method_factors"),
    path("leaderboard/", views.leaderboard_page, name="leaderboard"),
    path("leaderboard.csv", views.leaderboard_csv, name="leaderboard_csv"),
    path("account/tokens/", views.token_list, name="token_list"),
    path("account/tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
]
