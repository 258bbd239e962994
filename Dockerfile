# One web instance of the farm. The same image also renders the Docker nginx config
# (the nginx-config service in compose.yaml), hence farmctl/ and nginx/ below.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies before source, so a code change reuses this layer. requirements.lock also pins
# the dev, test and load-test tools (playwright, locust, matplotlib, ...); used as constraints it
# keeps the locked versions while installing only what runs here. supervisor is imported by
# `python -m farmctl` (farmctl.native), which the nginx-config service runs.
COPY requirements.lock ./
RUN pip install --no-cache-dir -c requirements.lock \
        fastapi "uvicorn[standard]" "redis[hiredis]" pydantic-settings argon2-cffi jinja2 \
        python-multipart httpx supervisor

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

COPY app/ app/
COPY farmctl/ farmctl/
COPY nginx/ nginx/

USER app
EXPOSE 8000

# python is the one HTTP client this slim image is sure to have (no curl, no wget).
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=1)"]

# --timeout-keep-alive 75 = farmctl.config.APP_KEEPALIVE_S, longer than nginx's upstream
# keepalive_timeout, so nginx always drops an idle connection first.
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--timeout-keep-alive", "75", "--timeout-graceful-shutdown", "10", \
     "--no-server-header", "--no-access-log"]
