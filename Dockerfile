# One image for every service: `posmesh serve <service>` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    POSMESH_DATA_DIR=/var/lib/posmesh
WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml ./
RUN mkdir -p posmesh services stack \
    && touch posmesh/__init__.py services/__init__.py stack/__init__.py \
    && pip install . && pip uninstall -y posmesh

COPY protos ./protos
COPY posmesh ./posmesh
COPY services ./services
COPY stack ./stack
COPY envoy ./envoy
# Editable, so the generated code and envoy/ templates stay where stack/ looks for them.
RUN pip install --no-deps -e . && python -m stack.codegen

# keys/ and mail/ exist in the image so fresh named volumes mounted there are owned by posmesh too.
# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric user (deploy/k8s/).
RUN useradd --system --uid 10001 --user-group --home /var/lib/posmesh posmesh \
    && mkdir -p /var/lib/posmesh/keys /var/lib/posmesh/mail && chown -R posmesh /var/lib/posmesh
USER 10001

ENTRYPOINT ["posmesh"]
CMD ["--help"]
