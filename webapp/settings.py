"""The one settings module: every deployment difference is an environment variable.

Read top to bottom: typed env helpers, paths, security (dev defaults only while DEBUG), apps,
database, static files (whitenoise, plotly.js served locally), Celery, Context Lab's own knobs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import dj_database_url
import plotly
from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off``; anything else is a typo worth failing on."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off).")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    """A comma-separated list; blanks dropped."""
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- paths -----------------------------------------------------------------------------------------

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("CONTEXTLAB_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

# --- security --------------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (50+ random characters) when DJANGO_DEBUG is off.")
    SECRET_KEY = "dev-only-secret-key-never-use-in-production-0123456789abcdefghij"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Production hardening: on unless DEBUG, each one overridable for unusual deployments.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    # Only when a trusted proxy strips and sets this header; otherwise clients could spoof https.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- apps ------------------------------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "experiments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database --------------------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- static files ----------------------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# whitenoise warns on every start if it is missing; OSError: a read-only image where collectstatic already ran
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # plotly.min.js ships inside the plotly wheel; serve that copy, never a CDN.
    ("vendor/plotly", str(Path(plotly.__file__).resolve().parent / "package_data")),
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("CONTEXTLAB_MANIFEST_STATIC", not DEBUG)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Celery (read by webapp/celery.py; each choice explained there) ------------------------------------

BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The file transport needs its folders before the first message; a dev box needs no Redis.
    # Processed messages are not kept: a dev box would otherwise grow var/broker forever.
    for folder in ("queue", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # kombu's virtual transports poll an empty queue once a second by default: a submitted run then waits
        # up to 1 s for an idle worker. Listing a folder ten times a second costs nothing measurable.
        "polling_interval": env_float("CONTEXTLAB_BROKER_POLL_INTERVAL", 0.1),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}

# --- Context Lab ---------------------------------------------------------------------------------------

CONTEXTLAB_DATA_DIR = DATA_DIR
CONTEXTLAB_HEARTBEAT_TIMEOUT = env_int("CONTEXTLAB_HEARTBEAT_TIMEOUT", 120)
"""Seconds without a heartbeat after which the sweeper declares a running run's worker lost."""
CONTEXTLAB_HEARTBEAT_INTERVAL = env_float("CONTEXTLAB_HEARTBEAT_INTERVAL", 5)
"""Seconds between heartbeats written by a worker while its run executes."""
CONTEXTLAB_CANCEL_POLL_INTERVAL = env_float("CONTEXTLAB_CANCEL_POLL_INTERVAL", 0.5)
"""How often a running run's heartbeat thread reads its cancel flag (the pipeline then asks no query)."""
CONTEXTLAB_LOG_TAIL_LINES = 50
CONTEXTLAB_MODEL_ROOTS = [
    Path(p).expanduser().resolve()
    for p in env_list("CONTEXTLAB_MODEL_ROOTS", [str(DATA_DIR), str(BASE_DIR / "gpu_workers" / "demo" / "model")])
]
"""Folders under which the form and the API accept local model paths, so a user cannot make the server read
arbitrary files; ``manage.py register_model`` trusts its operator and skips the check."""
CONTEXTLAB_GGUF_TIMEOUT = env_int("CONTEXTLAB_GGUF_TIMEOUT", 1800)
"""Seconds a GGUF conversion (de-quantising in a subprocess) may take before registration gives up."""
CONTEXTLAB_DEVICE = env_str("CONTEXTLAB_DEVICE", "auto")
"""The RunSpec device: ``auto`` (CUDA when the worker has it), ``cpu`` or ``cuda``."""
CONTEXTLAB_TRAIN_PROCESSES = max(1, env_int("CONTEXTLAB_TRAIN_PROCESSES", 1))
"""RunSpec ``train_processes``: processes a run's training step runs in on this worker (one per GPU)."""
CONTEXTLAB_TRAIN_LAUNCHER = env_str("CONTEXTLAB_TRAIN_LAUNCHER", "accelerate")
"""RunSpec ``train_launcher``: ``accelerate``, or ``torchrun`` for several CPU (gloo) processes."""
CONTEXTLAB_CORPUS_DIR = env_str("CONTEXTLAB_CORPUS_DIR", "")
"""The built-in corpus's directory on the worker (the RunSpec's dataset ``corpus_dir``); blank = var/demo_corpus."""
CONTEXTLAB_PAGE_SIZE = max(1, env_int("CONTEXTLAB_PAGE_SIZE", 50))
"""Experiments per page on the dashboard and in ``GET /api/v1/experiments/``."""
CONTEXTLAB_COMPARE_MAX_RUNS = max(2, env_int("CONTEXTLAB_COMPARE_MAX_RUNS", 200))
"""Runs one compare page draws at most (its queries do not grow with runs, but the page and charts do)."""

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "INFO")},
}
