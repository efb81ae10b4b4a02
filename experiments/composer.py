"""The experiment composer: the experiment form, the evaluation and training recipes and the method rows,
validated together into what ``services.submit_experiment`` takes, with the recipes as spec objects
(:class:`~gpu_workers.spec.EvalSpec`, :class:`~gpu_workers.spec.TrainSpec`).

The page posts all four parts as form fields. The API posts the same experiment fields and method rows, but its
``evaluations`` and ``training`` JSON objects are parsed straight into the spec objects
(``EvalSpec.from_json`` / ``TrainSpec.from_json``), not re-encoded as form strings. Both then go through the
same checks against the model and the methods, and every spec error lands through :meth:`Composer.report`:
on the form field the user typed in, or as ``errors["evaluations.<field>"]`` in the API's 400 body.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django import forms

from experiments.composer_forms import (
    INITIAL_FAMILIES,
    EvaluationForm,
    ExperimentForm,
    TrainingForm,
    default_stride,
)
from experiments.method_forms import MethodFormSet, RowContext
from experiments.models import BaseModel
from gpu_workers import mixed_windows
from gpu_workers.data.documents import DatasetError
from gpu_workers.methods import FAMILIES
from gpu_workers.spec import EvalSpec, SpecError, TrainSpec

SECTIONS = {"eval": "evaluations", "train": "training"}
"""A spec's section (``SpecError.section``) → its key in an API body and in the API's error names."""
SPEC_FIELD_TO_FORM = {"lengths": "eval_lengths", "documents": "eval_documents"}
"""EvalSpec fields the experiment form asks for."""
EVAL_SETTINGS = {f.name for f in dataclasses.fields(EvalSpec)} - set(SPEC_FIELD_TO_FORM)
"""What an API body's ``evaluations`` object may hold."""
TRAIN_SETTINGS = {f.name for f in dataclasses.fields(TrainSpec)}
API_EVALUATION_DEFAULTS: dict[str, Any] = {"suite": ["perplexity"]}
"""What an API body's ``evaluations`` falls back to: EvalSpec's defaults, perplexity only (the page ticks more)."""


def put_on_form(form: forms.Form, exc: SpecError, field: str | None = None) -> None:
    """The one way a spec error reaches a form: beside *field* (default: the error's own field) if the form has
    it, else at the top of the form."""
    name = field or exc.field
    form.add_error(name if name in form.fields else None, exc.sentence)


class Composer:
    """The experiment form and its method rows, validated together (rows need the model's facts)."""

    prefix = "methods"

    def __init__(self, user: Any, data: Any = None, *, evaluations: Any = None, training: Any = None,
                 from_json: bool = False) -> None:
        """*data*: form data (the page's POST). With ``from_json`` (the API), *evaluations* and *training* are
        the body's JSON values and the evaluation and training forms are not used."""
        self.user = user
        self.from_json = from_json
        self.context = RowContext()
        self.form = ExperimentForm(data, user=user)
        self.evaluation = EvaluationForm(None if from_json else data)
        self.training = TrainingForm(None if from_json else data)
        self.raw_evaluations = {"suite": evaluations} if isinstance(evaluations, list) else evaluations
        self.raw_training = training
        self.json_errors: dict[str, list[str]] = {}
        self.json_evaluations: dict[str, Any] = {}
        self.eval_spec: EvalSpec | None = None
        self.train_spec = TrainSpec()
        initial = [{"family": name} for name in INITIAL_FAMILIES] if data is None else None
        self.methods = MethodFormSet(data, prefix=self.prefix, initial=initial, form_kwargs={"context": self.context})

    # --- errors --------------------------------------------------------------------------------------------

    def report(self, exc: SpecError) -> None:
        """Put a spec error where the user typed the setting: the experiment form for lengths and documents,
        else the evaluation or training form (page) or ``<section>.<field>`` (API)."""
        if exc.section == "eval" and exc.field in SPEC_FIELD_TO_FORM:
            put_on_form(self.form, exc, SPEC_FIELD_TO_FORM[exc.field])
        elif self.from_json:
            key = SECTIONS[exc.section] + ("" if exc.field == "__all__" else f".{exc.field}")
            self.json_errors.setdefault(key, []).append(exc.sentence)
        else:
            put_on_form(self.evaluation if exc.section == "eval" else self.training, exc)

    def _json_section(self, section: str, raw: Any, known: set[str]) -> dict[str, Any]:
        """A body's settings object with unknown keys named (and dropped) so the rest is still checked."""
        name = SECTIONS[section]
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            hint = "a list of names or an object of settings with a suite list" if section == "eval" else \
                'an object of settings, e.g. {"mode": "finetune", "steps": 100}'
            self.json_errors[name] = [f"Give {name} as {hint}."]
            return {}
        unknown = sorted(set(raw) - known)
        if unknown:
            self.json_errors[name] = [f"Unknown {name[:-1] if name.endswith('s') else name} settings: "
                                      f"{', '.join(map(str, unknown))}."]
        return {k: v for k, v in raw.items() if k in known}

    # --- validation ----------------------------------------------------------------------------------------

    def is_valid(self) -> bool:
        if self.from_json:
            self.json_evaluations = {**API_EVALUATION_DEFAULTS,
                                     **self._json_section("eval", self.raw_evaluations, EVAL_SETTINGS)}
            suite = self.json_evaluations["suite"]
            self.form.suite = tuple(e for e in suite if isinstance(e, str)) if isinstance(suite, list) else ()
            evaluation_ok = True
        else:
            evaluation_ok = self.evaluation.is_valid()
            if evaluation_ok:
                self.form.suite = tuple(self.evaluation.cleaned_data["suite"])
        form_ok = self.form.is_valid()
        data = self.form.cleaned_data
        if form_ok and evaluation_ok:
            evaluation_ok = self._check_evaluation(data)
        training_ok = self._check_training()
        base, target = data.get("base_model"), data.get("target_length")
        if base is not None and target is not None:
            self.context.base = base.rope_facts()
            self.context.target_length = target
        methods_ok = self.methods.is_valid()
        if methods_ok and self.context.base is None:
            # Rows could not be checked without a model and a target; the form already says why.
            methods_ok = False
        if training_ok and methods_ok and form_ok:
            training_ok = self._check_training_against(base, target)
        return form_ok and methods_ok and evaluation_ok and training_ok and not self.json_errors

    def _check_training(self) -> bool:
        try:
            if self.from_json:
                known = self._json_section("train", self.raw_training, TRAIN_SETTINGS)
                self.train_spec = TrainSpec.from_json(known)
            elif self.training.is_valid():
                self.train_spec = self.training.spec()
            else:
                return False
        except SpecError as exc:
            self.report(exc)
            return False
        return True

    def _check_evaluation(self, data: dict[str, Any]) -> bool:
        base: BaseModel = data["base_model"]
        try:
            if self.from_json:
                settings = dict(self.json_evaluations)
                if settings.get("stride") is None:
                    settings["stride"] = default_stride(base.original_context)
                self.eval_spec = EvalSpec.from_json(
                    {**settings, "lengths": data["eval_lengths"], "documents": data["eval_documents"]})
            else:
                self.eval_spec = self.evaluation.spec(data["eval_lengths"], data["eval_documents"],
                                                      base.original_context)
            self._check_evaluation_against(self.eval_spec, data)
        except SpecError as exc:
            self.report(exc)
            return False
        return True

    def _check_training_against(self, base: BaseModel, target: int) -> bool:
        """What the recipe means depends on the model and the methods: refuse settings that would do nothing."""
        spec = self.train_spec
        if not spec.enabled:
            return True
        ok = True
        if spec.mixed_windows:
            rope = self.context.base  # the model's facts, read once for the method rows
            assert rope is not None, "only called once the rows were checked against the model"
            offending = [f"{FAMILIES[form.cleaned_data['family']].label} (row {i + 1})"
                         for i, form in enumerate(self.methods.forms)
                         if not form.is_blank
                         and not mixed_windows.rope_changes_with_length(form.cleaned_data["family"], rope)]
            if offending:
                self.report(SpecError(mixed_windows.refusal(offending, rope), "mixed_windows", "train"))
                ok = False
        if spec.pose:
            length = spec.train_length or base.original_context
            if length >= target:
                where = "training length" if spec.train_length else "model's original context"
                self.report(SpecError(
                    f"PoSE trains at a window shorter than the target and skips its position ids ahead to reach "
                    f"the target; the {where} ({length} tokens) is not shorter than the target of {target}",
                    "train_length" if spec.train_length else "pose", "train"))
                ok = False
        return ok

    def _check_evaluation_against(self, spec: EvalSpec, data: dict[str, Any]) -> None:
        """What needs the model: LongPPL's windows against its original context, RULER's prompts built with
        its tokenizer from the dataset's text (raises the SpecError a run would raise)."""
        base, dataset = data["base_model"], data["dataset"]
        if spec.wants("longppl") and spec.longppl_short_window:
            long_window = min(base.original_context, max(spec.lengths))
            if spec.longppl_short_window >= long_window:
                raise SpecError(
                    f"the LongPPL short window must be shorter than the evaluator's window: the original context "
                    f"({base.original_context} tokens), capped at the longest length ({long_window})",
                    "longppl_short_window")
        if spec.wants("ruler"):
            from gpu_workers.data.ruler import check_settings
            from gpu_workers.tokenizer_files import load_light_tokenizer

            try:
                tokenizer = load_light_tokenizer(base.source)  # tokenizer.json via `tokenizers`: no torch
            except OSError as exc:
                self.form.add_error("base_model", f"Could not load {base.name}'s tokenizer: {exc}")
                raise SpecError(f"RULER prompts need {base.name}'s tokenizer", "ruler_tasks") from None
            try:
                check_settings(tokenizer, dataset.spec(), list(spec.lengths), spec.ruler_samples,
                               list(spec.ruler_tasks))
            except DatasetError as exc:
                raise SpecError(f"RULER haystacks could not be read from {dataset.name}: {exc}",
                                "ruler_tasks") from None

    # --- results -------------------------------------------------------------------------------------------

    def cleaned(self) -> dict[str, Any]:
        """What ``services.submit_experiment`` takes: the experiment form's data, the method rows and the two
        spec objects (``evaluation``, ``training``)."""
        assert self.eval_spec is not None, "cleaned() after is_valid()"
        data = dict(self.form.cleaned_data)
        data["methods"] = self.methods.methods()
        data["evaluation"] = self.eval_spec
        data["training"] = self.train_spec
        return data

    def errors(self) -> dict[str, list[str]]:
        """Field → messages, method rows as ``methods.<index>.<param>``: the API's 400 body."""
        out: dict[str, list[str]] = {field: list(messages) for field, messages in self.form.errors.items()}
        for field, messages in self.evaluation.errors.items():
            out[f"evaluations.{field}"] = list(messages)
        for field, messages in self.training.errors.items():
            out[f"training.{field}"] = list(messages)
        for key, messages in self.json_errors.items():
            out.setdefault(key, []).extend(messages)
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
