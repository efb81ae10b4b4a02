"""How a JSON API request proves who it is: ``Authorization: Token <key>``, or the browser session.

Token requests carry no cookies, so they are exempt from CSRF; session requests are not, so
unsafe methods get Django's CSRF check (the X-CSRFToken header) exactly as a form post would.
Errors are JSON: 401 without credentials, 403 for CSRF and viewers, 404 for other teams' objects.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from experiments import services
from experiments.models import ApiToken

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
View = Callable[..., HttpResponse]


def error(status: int, detail: str, **extra: Any) -> JsonResponse:
    response = JsonResponse({"detail": detail, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Token realm="api"'
    return response


def _token_user(header: str) -> Any | None:
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "token" or not key:
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.hash_key(key)).first()
    if token is None or not token.user.is_active:
        return None
    services.touch_api_token(token)
    return token.user


def _csrf_rejected(request: HttpRequest) -> bool:
    check = CsrfViewMiddleware(lambda _request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {}) is not None


def api_view(*methods: str) -> Callable[[View], View]:
    """Authenticate, enforce the allowed methods, and turn 403/404 into JSON."""

    def decorator(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            header = request.headers.get("Authorization", "")
            if header:
                user = _token_user(header)
                if user is None:
                    return error(401, "Invalid or revoked API token.")
                request.user = user
            elif not request.user.is_authenticated:
                return error(401, "Authentication required: send 'Authorization: Token <key>' or log in.")
            elif request.method not in SAFE_METHODS and _csrf_rejected(request):
                return error(403, "CSRF check failed: send the X-CSRFToken header with session requests.")
            if request.method not in methods:
                response = error(405, f"Method {request.method} not allowed.")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except Http404 as exc:
                return error(404, str(exc) or "Not found.")
            except PermissionDenied as exc:
                return error(403, str(exc) or "Permission denied.")

        return wrapper

    return decorator
