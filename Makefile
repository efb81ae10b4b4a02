# The two commands. Everything else is in scripts/.
.PHONY: run test

run:  ## set up and start web + Celery worker on embedded defaults (SQLite, filesystem broker)
	./scripts/run.sh

test:  ## set up and run the whole suite (ruff, Django checks, pytest incl. worker, e2e and browser tests)
	./scripts/test.sh
