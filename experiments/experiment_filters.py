"""The experiment list's filters (team, base model, dataset, run status, name search, method family, creation
dates, archived) and its pagination.

Shared by the dashboard and ``GET /api/v1/experiments/``. Query-string values are untrusted: a team,
model or dataset id the user cannot see (or that is not a number) is ignored and the form says so on that
field; an unknown status, method family or archived choice likewise, and a malformed date or a range that ends
before it starts; a page past the end is the last page, a malformed page the first. Archived experiments are
left out unless ``archived`` is ``include`` or ``only``.
Choices are checked against the user's own teams, models and datasets, so an id cannot reveal anything.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import QueryDict

from experiments import selectors
from experiments.access import teams_of, visible_base_models, visible_datasets, visible_experiments
from experiments.models import Experiment, Run
from gpu_workers.methods import FAMILIES

FILTER_KEYS = ("team", "base_model", "dataset", "status", "q", "method_family", "created_from", "created_to",
               "archived")
ARCHIVED_CHOICES = [(selectors.ARCHIVED_HIDE, "Hide archived"), (selectors.ARCHIVED_INCLUDE, "Include archived"),
                    (selectors.ARCHIVED_ONLY, "Only archived")]
BAD_DATE = "Not a date (use YYYY-MM-DD): ignored."


def _date_input(role: str) -> forms.DateInput:
    return forms.DateInput(attrs={"type": "date", "data-role": role}, format="%Y-%m-%d")


class ExperimentFilterForm(forms.Form):
    """Bound to the query string; :meth:`filters` is what survived validation (bad fields dropped)."""

    team = forms.ModelChoiceField(queryset=None, required=False, label="Team",
                                  empty_label="All teams")
    base_model = forms.ModelChoiceField(queryset=None, required=False, label="Base model",
                                        empty_label="All base models")
    dataset = forms.ModelChoiceField(queryset=None, required=False, label="Dataset",
                                     empty_label="All datasets")
    status = forms.ChoiceField(choices=[("", "Any run status"), *Run.Status.choices], required=False,
                               label="A run that is")
    q = forms.CharField(required=False, max_length=200, label="Name contains", strip=True)
    method_family = forms.ChoiceField(
        choices=[("", "Any method family"), *((f.name, f.label) for f in FAMILIES.values())], required=False,
        label="A run of the family", widget=forms.Select(attrs={"data-role": "filter-method-family"}),
    )
    created_from = forms.DateField(required=False, label="Created from", widget=_date_input("filter-created-from"),
                                   error_messages={"invalid": BAD_DATE})
    created_to = forms.DateField(required=False, label="Created to", widget=_date_input("filter-created-to"),
                                 error_messages={"invalid": BAD_DATE})
    archived = forms.ChoiceField(choices=ARCHIVED_CHOICES, required=False, label="Archived",
                                 widget=forms.Select(attrs={"data-role": "filter-archived"}))

    def __init__(self, user: Any, data: QueryDict | dict[str, Any] | None = None) -> None:
        wanted = {key: data.get(key) for key in FILTER_KEYS if data and data.get(key) not in (None, "")}
        super().__init__(wanted)
        self.fields["team"].queryset = teams_of(user).order_by("name")
        self.fields["base_model"].queryset = visible_base_models(user).order_by("name", "id")
        self.fields["dataset"].queryset = visible_datasets(user).order_by("name", "id")
        for name in ("team", "base_model", "dataset"):
            self.fields[name].error_messages["invalid_choice"] = (
                f"Unknown {self.fields[name].label.lower()}: ignored."
            )
            self.fields[name].error_messages["invalid_pk_value"] = (
                f"Unknown {self.fields[name].label.lower()}: ignored."
            )
        self.fields["status"].error_messages["invalid_choice"] = "Unknown run status: ignored."
        self.fields["method_family"].error_messages["invalid_choice"] = "Unknown method family: ignored."
        self.fields["archived"].error_messages["invalid_choice"] = (
            "Unknown archived choice (blank, include or only): ignored."
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("created_from"), data.get("created_to")
        if start and end and end < start:
            self.add_error("created_to", "Ends before “Created from”: ignored.")
        return data

    def filters(self) -> dict[str, Any]:
        """The valid filters only (a bad field is reported by ``errors`` and left out)."""
        self.is_valid()
        clean = getattr(self, "cleaned_data", {})
        return {key: clean[key] for key in FILTER_KEYS if key not in self.errors and clean.get(key)}

    def params(self) -> dict[str, Any]:
        """The valid filters as query-string values, for links that keep them (pagination)."""
        return {key: getattr(value, "pk", value) for key, value in self.filters().items()}


def experiment_page(user: Any, query: QueryDict) -> tuple[ExperimentFilterForm, Page, QuerySet[Experiment]]:
    """The filter form, the requested page of the user's filtered experiments, and the whole filtered list.

    Two queries whatever the number of experiments (the form's choices are lazy: rendering a select costs
    one each, validating a given id one): the paginator's count, and the page's rows with their run counts.
    The page is cut from the bare list (ids, ordered, LIMIT/OFFSET) in a subquery and only its rows get the
    run counts, so a late page does not count the runs of every experiment it skips (docs/performance.md).
    """
    form = ExperimentFilterForm(user, query)
    filters = form.filters()
    bare = selectors.filter_experiments(visible_experiments(user).order_by("-created", "-id"), **filters)
    paginator = Paginator(bare, settings.CONTEXTLAB_PAGE_SIZE)
    page = paginator.get_page(query.get("page"))
    start = (page.number - 1) * paginator.per_page
    ids = bare.values("pk")[start:start + paginator.per_page]
    experiments = selectors.filter_experiments(selectors.experiments_for_user(user), **filters)
    page.object_list = list(experiments.filter(pk__in=ids))
    return form, page, experiments
