# One image for every service; the command picks the service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY shared ./shared
COPY services ./services
COPY voiceagent ./voiceagent
RUN pip install --no-cache-dir -c constraints.txt ".[local,cloud,otel]" \
 && useradd --create-home --uid 10001 voice
USER voice
EXPOSE 8080
CMD ["voiceagent", "gateway"]
