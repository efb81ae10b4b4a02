"""The app's pages."""

from django.urls import path

from experiments import composer_views, length_stats_views, run_views, team_views, views

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
    path("datasets/<int:dataset_id>/length-stats/", length_stats_views.dataset_length_stats,
         name="dataset_length_stats"),
    path("datasets/<int:dataset_id>/length-stats/measure/", length_stats_views.dataset_length_stats_measure,
         name="dataset_length_stats_measure"),
    path("methods/", views.method_list, name="method_list"),
    path("methods/<int:method_id>/", views.method_detail, name="method_detail"),
    path("methods/<int:method_id>/<str:which>_factor.csv", views.method_factors, name="method_factors"),
    path("leaderboard/", views.leaderboard_page, name="leaderboard"),
    path("leaderboard.csv", views.leaderboard_csv, name="leaderboard_csv"),
    path("account/tokens/", views.token_list, name="token_list"),
    path("account/tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    # issue 15: the run page, composer estimates, teams
    path("runs/<uuid:run_id>/", run_views.run_detail, name="run_detail"),
    path("runs/<uuid:run_id>/log.txt", run_views.run_log_text, name="run_log_text"),
    path("runs/<uuid:run_id>/log.json", run_views.run_log_json, name="run_log_json"),
    path("experiments/new/estimate/", composer_views.estimate, name="experiment_estimate"),
    path("teams/", team_views.team_list, name="team_list"),
    path("teams/new/", team_views.team_create, name="team_create"),
    path("teams/<int:team_id>/", team_views.team_detail, name="team_detail"),
    path("teams/<int:team_id>/members/add/", team_views.team_add_member, name="team_add_member"),
    path("teams/<int:team_id>/members/<int:membership_id>/role/", team_views.team_set_role, name="team_set_role"),
    path("teams/<int:team_id>/members/<int:membership_id>/remove/", team_views.team_remove_member,
         name="team_remove_member"),
    path("teams/<int:team_id>/leave/", team_views.team_leave, name="team_leave"),
]
