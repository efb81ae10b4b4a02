"""What the teams pages accept; the rules about who may do what live in ``experiments.team_services``."""

from __future__ import annotations

from django import forms

from experiments.models import Membership


class TeamForm(forms.Form):
    name = forms.CharField(max_length=100, label="Team name")


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150, label="Username")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)
