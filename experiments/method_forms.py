"""The composer's method rows: a family and its parameters per row, the inputs generated from
``gpu_workers.methods.FAMILIES`` (``<family>__<param>``); a row is valid only if ``gpu_workers.methods.validate``
accepts it, so the browser, the API and the worker agree on what a method configuration means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from experiments.models import params_hash
from gpu_workers.methods import FAMILIES, Family, MethodError, RopeFacts, validate

MAX_METHOD_ROWS = 12


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
                if param.kind is bool:
                    self.fields[param_field_name(family.name, param.name)] = forms.BooleanField(
                        required=False, label=param.label, help_text=param.help,
                        widget=forms.CheckboxInput(attrs={"data-family": family.name, "class": "param-input"}),
                    )
                    continue
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
            raw = self.cleaned_data.get(param_field_name(family.name, param.name))
            if param.kind is bool:
                if raw:
                    params[param.name] = True
                continue
            value = (raw or "").strip()
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
