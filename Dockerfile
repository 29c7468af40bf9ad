# One image for every service: run it as `python -m services.<name>` (ingress, executor, notifier, control, bingx_sim).
# Secrets never enter the image; they come from the environment at run time (.env with compose, a Secret on k8s).

# Pinned to a patch release and a Debian release so a rebuild next month is the same interpreter on the same libc.
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Installed into a venv that the runtime stage copies whole: the source tree stays behind, so `python -m` always
# imports the installed package and never a stray checkout in the working directory.
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY shared/ shared/
COPY services/ services/
RUN /opt/venv/bin/pip install .


FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# A fixed numeric uid so Kubernetes can verify runAsNonRoot and volumes can be owned ahead of time.
# /var/lib/tvtb/telegram is the notifier's session directory: created here, owned by the app user, so a named
# volume mounted on it starts with the right owner.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /var/lib/tvtb --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/tvtb/telegram \
    && chown -R app:app /var/lib/tvtb

COPY --from=build /opt/venv /opt/venv

WORKDIR /var/lib/tvtb
USER 10001:10001

# ingress, control, bingx_sim, executor metrics, notifier metrics (documentation only; compose/k8s publish ports).
EXPOSE 8080 8081 8090 9102 9103

# Harmless default: the ingress alone places no order. Compose and k8s name the service explicitly.
CMD ["python", "-m", "services.ingress"]
