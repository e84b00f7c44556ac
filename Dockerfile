# One image for every service; the command picks the service (voiceagent gateway|asr|agent|tts).
#
# Base pinned by digest: a tag moves, a digest does not. The digest below is the one published
# for python:3.11-slim-bookworm (linux/amd64+arm64 index) when this line was written; it could
# not be pulled on the machines this was written on (no Docker daemon), so CI's image build is
# what checks it: `docker build` fails if the digest does not exist. To move to a newer base:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
# The shipped packages only: devkit/ (call simulator, provider fakes) and benchmarks/ are for
# development (tests/unit/test_image.py checks they stay out).
COPY shared ./shared
COPY services ./services
COPY voiceagent ./voiceagent
# Production extras: the embedded speech stack, the cloud SDKs, tracing, and aws (ENV_VARS_ARN
# from Secrets Manager, ElastiCache IAM tokens). tests/unit/test_image.py keeps this line in
# step with pyproject.toml.
RUN pip install --no-cache-dir -c constraints.txt ".[local,cloud,otel,aws]" \
 && groupadd --gid 10001 voice \
 && useradd --no-log-init --create-home --uid 10001 --gid 10001 voice
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
CMD ["voiceagent", "gateway"]
