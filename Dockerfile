# The digits image: the worker, beat, flower and the one-shot migration all run from it
# (docker-compose.yml picks the command). CPU only: the tensorflow wheel from PyPI runs on the CPU
# unless its [and-cuda] extra brings the CUDA libraries, and nothing here installs them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CUDA_VISIBLE_DEVICES=""

# A fixed uid, so that bind-mounted inbox and done directories can be given to it on the host.
ARG DIGITS_UID=10001
RUN useradd --create-home --uid "${DIGITS_UID}" --user-group digits

# Installed, not run from a checkout: the shipped model (model/shipped/cnn.keras and its card) is
# package data, so it lands in site-packages beside the code that loads it by default.
COPY pyproject.toml README.md /tmp/digits/
COPY model /tmp/digits/model
COPY worker /tmp/digits/worker
COPY scripts /tmp/digits/scripts
RUN pip install "/tmp/digits[postgres,ops]" \
    && rm -rf /tmp/digits \
    && python -c "from digits.model.inference import SHIPPED_MODEL as m; assert m.is_file(), m; print(m)"

USER digits
WORKDIR /home/digits
CMD ["celery", "-A", "digits.worker.queue.celery_app", "worker", "--pool", "prefork", "--concurrency", "2", \
     "--queues", "interactive,batch", "--loglevel", "INFO"]
