# One image for every tier3 service; the build argument EXTRAS picks the optional dependencies,
# so the stream processors do not carry the ML stack and the trainer does not carry Faust:
#   docker build --build-arg EXTRAS=streams -t tier3-streams .
#   docker build --build-arg EXTRAS=capture,s3 -t tier3-capture .
#   docker build --build-arg EXTRAS=train,s3 -t tier3-trainer .
FROM python:3.11-slim

ARG EXTRAS="streams,capture,s3"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TIER3_LOG_JSON=1 \
    TIER3_HOME=/var/lib/tier3

WORKDIR /opt/tier3
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY tasks ./tasks
COPY streams ./streams
COPY consumers ./consumers
COPY trainers ./trainers
RUN pip install ".[${EXTRAS}]"

# Not root: a compromised stage cannot touch the image or other containers' files.
RUN useradd --system --uid 10001 --home-dir /var/lib/tier3 --create-home tier3
USER tier3
WORKDIR /var/lib/tier3

ENTRYPOINT ["tier3"]
CMD ["--help"]
