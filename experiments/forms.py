"""Validation of everything a user types, shared by the HTML pages and the JSON API.

The experiment composer is an :class:`ExperimentForm` plus a formset of method rows; a row's
parameter inputs are generated from ``gpu_workers.methods.FAMILIES`` (``<family>__<param>``), and a
row is valid only if ``gpu_workers.methods.validate`` accepts it, so the browser, the API and the
worker agree on what a method configuration means. Forms never save: ``services`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from experiments.access import submit_teams_of, visible_base_models, visible_datasets
from experiments.models import BaseModel, Dataset, Team, params_hash
from gpu_workers.data.documents import DatasetError, count_long_documents, inspect_dataset
from gpu_workers.methods import FAMILIES, Family, MethodError, RopeFacts, validate
from gpu_workers.model_facts import ModelSourceError, inspect_model
from gpu_workers.spec import DatasetSpec

MIN_EVAL_LENGTH = 16
MAX_EVAL_LENGTH = 1 << 20
MAX_EVAL_LENGTHS = 16
MAX_METHOD_ROWS = 12
INITIAL_FAMILIES = ("none", "pi", "dynamic_ntk", "yarn")


class TeamField(forms.ModelChoiceField):
    def __init__(self, user: Any, **kwargs: Any) -> None:
        teams = submit_teams_of(user)
        super().__init__(queryset=teams, empty_label=None, **kwargs)


def _default_team(user: Any) -> Team | None:
    teams = list(submit_teams_of(user)[:2])
    return teams[0] if len(teams) == 1 else None


# --- catalogue ------------------------------------------------------------------------------------------


class BaseModelForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=120)
    source = forms.CharField(
        max_length=500, help_text="A local model directory, or a Hugging Face id already in the local cache."
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=_default_team(user))
        self.facts: dict[str, Any] = {}

    def clean_source(self) -> str:
        source = self.cleaned_data["source"].strip()
        try:
            self.facts = inspect_model(source).to_json()
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

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=_default_team(user))
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
        team, name = data.get("team"), data.get("name")
        if team and name and Dataset.objects.filter(team=team, name=name).exists():
            self.add_error("name", f"{team} already has a dataset named “{name}”.")
        return data

    def dataset_fields(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key] for key in ("name", "kind", "path", "text_field", "source_field")}


# --- the experiment composer ----------------------------------------------------------------------------


def default_eval_lengths(original: int, target: int) -> list[int]:
    """original, 2×original, 4×original, … up to and including the target."""
    lengths: list[int] = []
    n = max(original, MIN_EVAL_LENGTH)
    while n < target:
        lengths.append(n)
        n *= 2
    lengths.append(target)
    return lengths


def parse_lengths(raw: str) -> list[int]:
    lengths = set()
    for part in raw.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise ValidationError(f"“{part}” is not a whole number of tokens.") from None
        if n < MIN_EVAL_LENGTH:
            raise ValidationError(f"Evaluation lengths must be at least {MIN_EVAL_LENGTH} tokens (got {n}).")
        if n > MAX_EVAL_LENGTH:
            raise ValidationError(f"Evaluation lengths must be at most {MAX_EVAL_LENGTH} tokens (got {n}).")
        lengths.add(n)
    if len(lengths) > MAX_EVAL_LENGTHS:
        raise ValidationError(f"At most {MAX_EVAL_LENGTHS} evaluation lengths, please.")
    return sorted(lengths)


class ModelChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: BaseModel) -> str:
        scope = obj.team.name if obj.team_id else "shared"
        return f"{obj.name} (context {obj.original_context}, {scope})"


class DatasetChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Dataset) -> str:
        scope = obj.team.name if obj.team_id else "shared"
        return f"{obj.name} ({obj.facts.get('documents', '?')} documents, {scope})"


class ExperimentForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=200)
    base_model = ModelChoice(queryset=BaseModel.objects.none())
    dataset = DatasetChoice(queryset=Dataset.objects.none())
    target_length = forms.IntegerField(min_value=MIN_EVAL_LENGTH, max_value=MAX_EVAL_LENGTH,
                                       help_text="The context length the methods should reach, in tokens.")
    eval_lengths = forms.CharField(
        required=False, label="Evaluation lengths",
        help_text="Comma-separated token counts; blank = original context, 2×, 4×, … up to the target.",
    )
    eval_documents = forms.IntegerField(min_value=1, max_value=256, initial=8, label="Evaluation documents",
                                        help_text="Documents per length; each must be as long as the longest length.")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=_default_team(user))
        self.fields["base_model"].queryset = visible_base_models(user)
        self.fields["dataset"].queryset = visible_datasets(user)
        if not self.is_bound:
            for name in ("base_model", "dataset"):
                only = list(self.fields[name].queryset[:2])
                if len(only) == 1:
                    self.fields[name].initial = only[0].pk

    def clean_eval_lengths(self) -> list[int]:
        return parse_lengths(self.cleaned_data.get("eval_lengths") or "")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        team, base, dataset = data.get("team"), data.get("base_model"), data.get("dataset")
        if team and base and base.team_id not in (None, team.pk):
            self.add_error("base_model", f"{base.name} belongs to another team; pick a shared model or {team}'s.")
        if team and dataset and dataset.team_id not in (None, team.pk):
            self.add_error("dataset", f"{dataset.name} belongs to another team; pick shared data or {team}'s.")
        target = data.get("target_length")
        if base is not None and target is not None and target < base.original_context:
            self.add_error(
                "target_length",
                f"Target length must be at least the model's original context of {base.original_context} tokens.",
            )
        if base is not None and target is not None and not self.has_error("eval_lengths"):
            if not data.get("eval_lengths"):
                data["eval_lengths"] = default_eval_lengths(base.original_context, target)
        if not self.errors and base is not None and dataset is not None:
            self._check_dataset_length(base, dataset, data)
        return data

    def _check_dataset_length(self, base: BaseModel, dataset: Dataset, data: dict[str, Any]) -> None:
        longest = max(data["eval_lengths"])
        needed = data["eval_documents"]
        try:
            found = count_long_documents(dataset.spec(), base.source, longest)
        except (DatasetError, ValueError) as exc:
            self.add_error("dataset", f"Could not read {dataset.name}: {exc}")
            return
        except OSError as exc:
            self.add_error("base_model", f"Could not load {base.name}'s tokenizer: {exc}")
            return
        if found < needed:
            self.add_error(
                "dataset",
                f"{dataset.name} has only {found} documents of at least {longest} tokens, but {needed} are needed. "
                f"Lower the longest evaluation length or the number of documents.",
            )


@dataclass
class RowContext:
    """Filled in once the experiment part is clean: what every method row validates against."""

    base: RopeFacts | None = None
    target_length: int | None = None


def _placeholder(default: Any) -> str:
    if default is None:
        return "derived"
    if isinstance(default, list | tuple):
        return ", ".join(f"{v:g}" for v in default)
    return f"{default:g}" if isinstance(default, float) else str(default)


def param_field_name(family: str, param: str) -> str:
    return f"{family}__{param}"


class MethodRowForm(forms.Form):
    """One method to compare: a family and that family's parameters (blank = derived default)."""

    family = forms.ChoiceField(required=False)
    params_json = forms.CharField(required=False, widget=forms.HiddenInput)
    """The API's way in: a JSON object of parameters instead of the per-family inputs."""

    def __init__(self, *args: Any, context: RowContext | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context or RowContext()
        self.fields["family"].choices = [("", "— no method —")] + [(f.name, f.label) for f in FAMILIES.values()]
        for family in FAMILIES.values():
            for param in family.params:
                self.fields[param_field_name(family.name, param.name)] = forms.CharField(
                    required=False,
                    label=param.label,
                    help_text=param.help,
                    widget=forms.TextInput(attrs={
                        "inputmode": "text" if param.kind is list else "decimal",
                        "placeholder": _placeholder(param.default),
                        "data-family": family.name,
                        "class": "param-input",
                    }),
                )
        self.method_errors: dict[str, list[str]] = {}
        self.canonical: dict[str, Any] | None = None

    def family_groups(self) -> list[tuple[Family, list[forms.BoundField]]]:
        """(family, its bound parameter fields) for the template, in FAMILIES order."""
        return [
            (family, [self[param_field_name(family.name, p.name)] for p in family.params])
            for family in FAMILIES.values()
        ]

    def _raw_params(self, family: Family) -> dict[str, Any] | None:
        raw_json = (self.cleaned_data.get("params_json") or "").strip()
        if raw_json:
            try:
                params = json.loads(raw_json)
            except json.JSONDecodeError:
                params = None
            if not isinstance(params, dict):
                self._method_error("params", "params_json", "Parameters must be a JSON object.")
                return None
            return params
        params = {}
        for param in family.params:
            value = (self.cleaned_data.get(param_field_name(family.name, param.name)) or "").strip()
            if value:
                params[param.name] = value
        return params

    def _method_error(self, key: str, field: str | None, message: str) -> None:
        self.method_errors.setdefault(key, []).append(message)
        self.add_error(field, message)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        name = data.get("family")
        if not name:
            return data
        family = FAMILIES[name]
        params = self._raw_params(family)
        if params is None or self.context.base is None or self.context.target_length is None:
            return data
        try:
            self.canonical = validate(name, params, self.context.base, self.context.target_length)
        except MethodError as exc:
            key = exc.field or "__all__"
            if key == "family":
                field: str | None = "family"
            elif (data.get("params_json") or "").strip():
                field = "params_json"
            elif param_field_name(name, key) in self.fields:
                field = param_field_name(name, key)
            else:
                field = None
            self._method_error(key, field, exc.message)
        return data

    @property
    def is_blank(self) -> bool:
        return not self.cleaned_data.get("family")

    def errors_by_param(self) -> dict[str, list[str]]:
        """Errors keyed by parameter name ("family", a param, or "__all__"), for the API."""
        out = {key: list(messages) for key, messages in self.method_errors.items()}
        reported = {message for messages in out.values() for message in messages}
        for field, messages in self.errors.items():
            key = field.split("__", 1)[1] if "__" in field and field != "__all__" else field
            key = "params" if key == "params_json" else key
            fresh = [m for m in messages if m not in reported]
            if fresh:
                out.setdefault(key, []).extend(fresh)
        return out


class BaseMethodFormSet(forms.BaseFormSet):
    def clean(self) -> None:
        if any(self.errors):
            return
        chosen = [(i, form) for i, form in enumerate(self.forms) if not form.is_blank]
        if not chosen:
            raise ValidationError("Choose at least one method to compare.")
        seen: dict[tuple[str, str], int] = {}
        for i, form in chosen:
            if form.canonical is None:
                continue
            key = (form.cleaned_data["family"], params_hash(form.canonical))
            if key in seen:
                raise ValidationError(
                    f"Method rows {seen[key] + 1} and {i + 1} are the same configuration; remove one."
                )
            seen[key] = i

    def methods(self) -> list[dict[str, Any]]:
        return [
            {"family": form.cleaned_data["family"], "params": form.canonical}
            for form in self.forms
            if not form.is_blank
        ]


MethodFormSet = forms.formset_factory(
    MethodRowForm, formset=BaseMethodFormSet, extra=0, min_num=0, max_num=MAX_METHOD_ROWS,
    validate_max=True, absolute_max=MAX_METHOD_ROWS,
)


class Composer:
    """The experiment form and its method rows, validated together (rows need the model's facts)."""

    prefix = "methods"

    def __init__(self, user: Any, data: Any = None) -> None:
        self.user = user
        self.context = RowContext()
        self.form = ExperimentForm(data, user=user)
        initial = [{"family": name} for name in INITIAL_FAMILIES] if data is None else None
        self.methods = MethodFormSet(data, prefix=self.prefix, initial=initial, form_kwargs={"context": self.context})

    def is_valid(self) -> bool:
        form_ok = self.form.is_valid()
        data = self.form.cleaned_data
        base, target = data.get("base_model"), data.get("target_length")
        if base is not None and target is not None:
            self.context.base = base.rope_facts()
            self.context.target_length = target
        methods_ok = self.methods.is_valid()
        if methods_ok and self.context.base is None:
            # Rows could not be checked without a model and a target; the form already says why.
            methods_ok = False
        return form_ok and methods_ok

    def cleaned(self) -> dict[str, Any]:
        """What ``services.submit_experiment`` takes."""
        data = dict(self.form.cleaned_data)
        data["methods"] = self.methods.methods()
        return data

    def errors(self) -> dict[str, list[str]]:
        """Field → messages, method rows as ``methods.<index>.<param>``: the API's 400 body."""
        out: dict[str, list[str]] = {field: list(messages) for field, messages in self.form.errors.items()}
        if self.methods.is_bound and not self.methods.management_form.is_valid():
            out["methods"] = ["The method rows are missing or malformed."]
            return out
        non_form = list(self.methods.non_form_errors())
        if non_form:
            out["methods"] = non_form
        for i, row in enumerate(self.methods.forms):
            for key, messages in row.errors_by_param().items():
                out[f"methods.{i}" if key == "__all__" else f"methods.{i}.{key}"] = messages
        return out


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
