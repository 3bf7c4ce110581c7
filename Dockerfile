FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse libfuse2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamfs ./streamfs
RUN pip install --no-cache-dir .
VOLUME /store
EXPOSE 8600
ENTRYPOINT ["streamfs"]
CMD ["serve", "--root", "/store", "--host", "0.0.0.0", "--port", "8600"]
