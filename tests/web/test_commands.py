"""Management commands: seed_demo is idempotent and leaves a usable demo."""

from __future__ import annotations

import io
from pathlib import Path

from django.contrib.auth import authenticate
from django.core.management import call_command

from experiments.models import BaseModel, Dataset, Membership, Method, Team


def seed(model_dir: Path) -> str:
    out = io.StringIO()
    call_command("seed_demo", "--model-source", str(model_dir), stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_seed_demo_is_idempotent(db: None, model_dir: Path) -> None:
    output = seed(model_dir)
    assert "password" in output and "demo" in output
    snapshot = [Team.objects.count(), Membership.objects.count(), BaseModel.objects.count(), Dataset.objects.count(),
                Method.objects.count()]
    assert snapshot == [1, 1, 1, 1, 5]
    seed(model_dir)
    assert [Team.objects.count(), Membership.objects.count(), BaseModel.objects.count(), Dataset.objects.count(),
            Method.objects.count()] == snapshot
    user = authenticate(username="demo", password="demo")
    assert user is not None
    assert Membership.objects.get(user=user).team.name == "Demo team"
    model = BaseModel.objects.get()
    assert model.team is None and model.original_context == 256 and model.source == str(model_dir)
    dataset = Dataset.objects.get()
    assert dataset.name == "Demo corpus (code + prose)" and dataset.kind == "builtin" and dataset.team is None
    assert dataset.facts["documents"] > 0
    families = sorted(Method.objects.values_list("family", flat=True))
    assert families == ["dynamic_ntk", "none", "ntk", "pi", "yarn"]
    assert Method.objects.get(family="pi", params={"factor": 4.0}).name == "PI (linear) ×4"
    assert not Method.objects.filter(team__isnull=False).exists()


def test_seed_demo_without_the_model_still_seeds_the_rest(db: None, tmp_path: Path) -> None:
    err = io.StringIO()
    call_command("seed_demo", "--model-source", str(tmp_path / "not-built"), stdout=io.StringIO(), stderr=err)
    assert "demo model not registered" in err.getvalue()
    assert BaseModel.objects.count() == 0 and Method.objects.count() == 5 and Dataset.objects.count() == 1


def test_seed_demo_for_production_creates_no_login(db: None, model_dir: Path) -> None:
    out = io.StringIO()
    call_command("seed_demo", "--model-source", str(model_dir), "--no-user", stdout=out, stderr=io.StringIO())
    assert "no demo login created" in out.getvalue()
    assert authenticate(username="demo", password="demo") is None
    assert BaseModel.objects.count() == 1 and Method.objects.count() == 5
