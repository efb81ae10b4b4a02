"""Admin for every table: the operator's escape hatch (fix a team, inspect a stuck run)."""

from typing import Any

from django.contrib import admin

from experiments import length_stats
from experiments.models import (
    ApiToken,
    Artifact,
    BaseModel,
    Dataset,
    DatasetLengthStats,
    Experiment,
    Measurement,
    Membership,
    Method,
    Run,
    Team,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "created")
    search_fields = ("name",)
    inlines = (MembershipInline,)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "team", "role")
    list_filter = ("role", "team")
    autocomplete_fields = ("user", "team")


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "source", "original_context", "head_dim", "rope_theta", "has_rope", "parameters")
    list_filter = ("team", "has_rope")
    search_fields = ("name", "source")

    def save_model(self, request: Any, obj: BaseModel, form: Any, change: bool) -> None:
        """A model added or repointed here gets its datasets' token lengths measured, as one registered on a page."""
        super().save_model(request, obj, form, change)
        length_stats.request_for_model(obj)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "kind", "path")
    list_filter = ("kind", "team")
    search_fields = ("name", "path")

    def save_model(self, request: Any, obj: Dataset, form: Any, change: bool) -> None:
        """A dataset added here, or repointed (kind, path, fields: a new data key), gets measured as one
        registered on the dataset form; rows already measured for the same documents are kept."""
        super().save_model(request, obj, form, change)
        length_stats.request_for_dataset(obj)


@admin.register(DatasetLengthStats)
class DatasetLengthStatsAdmin(admin.ModelAdmin):
    """Read-only: rows are written by ``experiments.length_stats`` (the dataset page measures again)."""

    list_display = ("dataset", "tokenizer_key", "status", "progress", "documents", "tokens", "longest", "finished_at")
    list_filter = ("status",)
    search_fields = ("dataset__name", "tokenizer_key", "tokenizer_source")
    exclude = ("lengths",)

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Method)
class MethodAdmin(admin.ModelAdmin):
    list_display = ("name", "family", "team", "params")
    list_filter = ("family", "team")
    search_fields = ("name",)
    readonly_fields = ("params_hash",)


class RunInline(admin.TabularInline):
    model = Run
    extra = 0
    fields = ("uuid", "method", "status", "progress", "attempt", "worker", "started_at", "finished_at")
    readonly_fields = fields
    show_change_link = True
    can_delete = False


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "base_model", "dataset", "target_length", "created_by", "created")
    list_filter = ("team",)
    search_fields = ("name", "uuid")
    readonly_fields = ("uuid", "created")
    inlines = (RunInline,)


class MeasurementInline(admin.TabularInline):
    model = Measurement
    extra = 0


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("uuid", "experiment", "method", "status", "progress", "attempt", "worker", "heartbeat_at")
    list_filter = ("status",)
    search_fields = ("uuid", "experiment__name")
    readonly_fields = ("uuid",)
    inlines = (MeasurementInline,)


@admin.register(Measurement)
class MeasurementAdmin(admin.ModelAdmin):
    list_display = ("run", "metric", "context_length", "value", "ci_low", "ci_high", "samples")
    list_filter = ("metric",)
    list_select_related = ("run__method", "run__experiment")


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("run", "kind", "path", "created")
    list_filter = ("kind",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created", "last_used")
    readonly_fields = ("key_hash", "prefix", "created", "last_used")
