"""Top-level routes: the app's pages, its JSON API, auth and the admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("experiments.urls")),
    path("api/v1/", include("experiments.api_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
