# One web instance of the farm. The same image also renders the Docker nginx, Sentinel and Prometheus
# configs (the farm-config service in compose.yaml), hence farmctl/, nginx/ and monitoring/ below.
# The base is a setting: the official image by default; `make images` builds a stand-in from
# Debian's packages where no registry answers (farmctl/docker/standins.sh).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/venv/bin:$PATH

WORKDIR /app

# Dependencies before source, so a code change reuses this layer: the project's runtime
# dependencies as pyproject.toml lists them, at the versions requirements.lock pins (the lock
# also pins the dev and load-test tools; as constraints it installs none of them). In a virtualenv:
# Debian's own Python refuses pip installs into the system (PEP 668).
COPY pyproject.toml requirements.lock ./
RUN python -m venv /venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -c requirements.lock -r requirements.txt

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

COPY app/ app/
COPY farmctl/ farmctl/
COPY nginx/ nginx/
COPY monitoring/ monitoring/

USER app
EXPOSE 8000

# Python's urllib (no curl, no wget in this slim image). With --restart-after, the check also
# SIGKILLs an app hung that long, for the restart policy to replace (app/probe.py; needs `init: true`).
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=2 \
    CMD ["python", "-m", "app.probe", "http://127.0.0.1:8000/healthz", "--restart-after", "8"]

# uvicorn with the farm's flags (app/__main__.py); FORWARDED_ALLOW_IPS comes from compose.yaml.
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
