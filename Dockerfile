FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY persistence persistence
COPY lua lua
RUN pip install --no-cache-dir . && useradd --system wallet
USER wallet
EXPOSE 8080
CMD ["wallet", "serve", "--host", "0.0.0.0", "--port", "8080"]
