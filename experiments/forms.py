"""Validation of what a user registers: base models, datasets and their haystack source, the dataset page's
mixture preview and the method page's chart; shared by the HTML pages and the JSON API.

The experiment composer's forms are in :mod:`experiments.composer_forms` (experiment, evaluation, training),
:mod:`experiments.method_forms` (method rows) and :mod:`experiments.composer` (all of them validated together
into spec objects). Forms never save: ``services`` does.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from experiments.access import submit_teams_of, visible_base_models
from experiments.model_sources import prepare_source
from experiments.models import BaseModel, Dataset, Team
from gpu_workers import catalog
from gpu_workers.data import builtin_corpus
from gpu_workers.data.documents import DatasetError, inspect_dataset
from gpu_workers.model_facts import ModelSourceError
from gpu_workers.spec import ALL_SOURCES, BUILTIN_HAYSTACK_SOURCE, DatasetSpec, TrainSpec

MIN_EVAL_LENGTH = 16
MAX_EVAL_LENGTH = 1 << 20


class TeamField(forms.ModelChoiceField):
    def __init__(self, user: Any, **kwargs: Any) -> None:
        teams = submit_teams_of(user)
        super().__init__(queryset=teams, empty_label=None, **kwargs)


def default_team(user: Any) -> Team | None:
    teams = list(submit_teams_of(user)[:2])
    return teams[0] if len(teams) == 1 else None


# --- catalogue ------------------------------------------------------------------------------------------


class BaseModelForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=120)
    source = forms.CharField(
        max_length=500,
        help_text="A local model directory, a local .gguf file (converted once to safetensors), or a Hugging Face "
                  "id already in the local cache.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=default_team(user))
        self.facts: dict[str, Any] = {}

    def clean_source(self) -> str:
        try:
            prepared = prepare_source(self.cleaned_data["source"])
            self.facts = prepared.facts
            source = prepared.source
        except ModelSourceError as exc:
            raise ValidationError(str(exc)) from None
        except Exception as exc:  # a config transformers cannot parse is still the user's input problem
            raise ValidationError(f"Could not read that model's config: {exc}") from None
        return source

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        team, name = data.get("team"), data.get("name")
        if team and name and BaseModel.objects.filter(team=team, name=name).exists():
            self.add_error("name", f"{team} already has a model named “{name}”.")
        return data


class DatasetForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=120)
    kind = forms.ChoiceField(choices=Dataset.Kind.choices, initial=Dataset.Kind.LOCAL)
    path = forms.CharField(max_length=500, required=False,
                           help_text="A .jsonl file, a text file or a directory; for a Hugging Face dataset, the "
                                     "directory written by save_to_disk. Blank for the built-in corpus.")
    text_field = forms.CharField(max_length=100, initial="text")
    source_field = forms.CharField(max_length=100, initial="source",
                                   help_text="The field naming each document's domain (optional in the data).")
    haystack_source = forms.CharField(
        max_length=100, required=False, label="Needle haystack source",
        help_text=f"Which source's documents fill needle-in-a-haystack prompts: a source value in the data, or "
                  f"“{ALL_SOURCES}”. Blank = “{BUILTIN_HAYSTACK_SOURCE}” for the built-in corpus, every document "
                  f"otherwise.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=default_team(user))
        # The built-in corpus's sources are known before it is read: offer them as suggestions.
        self.fields["haystack_source"].widget.attrs["list"] = "haystack-sources"
        self.facts: dict[str, Any] = {}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind = data.get("kind")
        if kind is None or self.has_error("text_field") or self.has_error("source_field"):
            return data
        path = (data.get("path") or "").strip()
        data["path"] = path
        if kind != Dataset.Kind.BUILTIN and not path:
            self.add_error("path", "Give the path of the data on the workers' file system.")
            return data
        try:
            spec = DatasetSpec(kind=kind, path=path, text_field=data["text_field"], source_field=data["source_field"])
            facts = inspect_dataset(spec)
        except (DatasetError, ValueError, OSError) as exc:
            self.add_error("kind" if kind == Dataset.Kind.BUILTIN else "path", str(exc))
            return data
        self.facts = {"documents": facts.documents, "chars_by_source": facts.chars_by_source,
                      "docs_by_source": facts.docs_by_source}
        data["haystack_source"] = (data.get("haystack_source") or "").strip()
        problem = haystack_source_problem(data["haystack_source"], sorted(facts.docs_by_source))
        if problem:
            self.add_error("haystack_source", problem)
        team, name = data.get("team"), data.get("name")
        if team and name and Dataset.objects.filter(team=team, name=name).exists():
            self.add_error("name", f"{team} already has a dataset named “{name}”.")
        return data

    @property
    def haystack_suggestions(self) -> tuple[str, ...]:
        """Sources known before any data is read: the built-in corpus's, and "all"."""
        return (*builtin_corpus.SOURCES, ALL_SOURCES)

    def dataset_fields(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key]
                for key in ("name", "kind", "path", "text_field", "source_field", "haystack_source")}


def haystack_source_problem(value: str, sources: list[str]) -> str:
    """Why *value* cannot be a dataset's haystack source ('' if it can): it must name a source its documents
    carry, so a typo is refused here rather than failing every needle run later."""
    if not value or value == ALL_SOURCES or value in sources:
        return ""
    listed = ", ".join(f"“{s}”" for s in sources) or "none"
    return f"The data has no documents from source “{value}”. Its sources: {listed}; or “{ALL_SOURCES}”."


class HaystackSourceForm(forms.Form):
    """The dataset page's choice of haystack source, among the sources counted when it was registered."""

    haystack_source = forms.ChoiceField(label="Needle haystack source", required=False)

    def __init__(self, *args: Any, dataset: Dataset, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"haystack_source": dataset.haystack_source})
        super().__init__(*args, **kwargs)
        default = BUILTIN_HAYSTACK_SOURCE if dataset.kind == Dataset.Kind.BUILTIN else ALL_SOURCES
        choices = [("", f"Default ({default})"), (ALL_SOURCES, "All sources")]
        counts = dataset.facts.get("docs_by_source") or {}
        choices += [(s, f"{s} ({counts[s]} documents)") for s in dataset.sources if s != ALL_SOURCES]
        if dataset.haystack_source and dataset.haystack_source not in dict(choices):
            choices.append((dataset.haystack_source, f"{dataset.haystack_source} (not in the data)"))
        self.fields["haystack_source"].choices = choices



class ModelChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: BaseModel) -> str:
        scope = obj.team.name if obj.team_id else "shared"
        return f"{obj.name} (context {obj.original_context}, {scope})"


class DatasetChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Dataset) -> str:
        scope = obj.team.name if obj.team_id else "shared"
        return f"{obj.name} ({obj.facts.get('documents', '?')} documents, {scope})"


# --- the dataset page's mixture preview -----------------------------------------------------------------


class MixturePreviewForm(forms.Form):
    """GET parameters of the dataset page: which tokenizer and which data strategy to preview."""

    base_model = ModelChoice(queryset=BaseModel.objects.none(), label="Tokenizer of",
                             help_text="Lengths are counted in this model's tokens; its context sets the defaults.")
    strategy = forms.ChoiceField(choices=catalog.choices(catalog.DATA_STRATEGIES), initial=TrainSpec.data_strategy)
    threshold = forms.IntegerField(required=False, min_value=1, label="Long-document threshold",
                                   help_text="Tokens; blank = 4 × the model's original context.")
    keep_short_p = forms.FloatField(min_value=0, max_value=1, initial=0.15, label="Keep short documents with p")
    sources = forms.CharField(required=False, label="Sources to upsample", help_text="Comma-separated.")
    multiplier = forms.FloatField(min_value=0.01, initial=2.0)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_model"].queryset = visible_base_models(user)
        first = self.fields["base_model"].queryset.first()
        if first is not None:
            self.fields["base_model"].initial = first.pk

    def clean_sources(self) -> list[str]:
        return [part.strip() for part in (self.cleaned_data.get("sources") or "").split(",") if part.strip()]


# --- the method page's chart ----------------------------------------------------------------------------


class ScalingChartForm(forms.Form):
    """Which base model and target length the method page draws its per-dimension scaling for (a GET form)."""

    base_model = ModelChoice(queryset=BaseModel.objects.none(), empty_label=None)
    target_length = forms.IntegerField(min_value=MIN_EVAL_LENGTH, max_value=MAX_EVAL_LENGTH,
                                       help_text="Length-dependent families are drawn at this input length.")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_model"].queryset = visible_base_models(user)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        base, target = data.get("base_model"), data.get("target_length")
        if base is not None and target is not None and target < base.original_context:
            self.add_error(
                "target_length",
                f"Target length must be at least the model's original context of {base.original_context} tokens.",
            )
        return data
