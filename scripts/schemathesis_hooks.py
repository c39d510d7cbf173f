"""Schemathesis hooks for scripts/api-conformance.sh.

Generated uploads are random bytes or a 1x1 PNG, so nearly every submission would be refused
with 400 and the stateful phase (which follows the links of a 202 to the job's status, result,
cancel and feedback) would never see a real job. In half of the generated single-file and
batch uploads the file contents are therefore a real sample photo from
../shared/models/samples instead. Nothing else is changed, so a body generated to violate the
schema still does.
"""

import os
import random

import schemathesis

MODELS = os.environ.get("MODEL_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models")
SAMPLES = os.path.join(MODELS, "samples")
PHOTOS = [
    open(os.path.join(SAMPLES, name), "rb").read()
    for name in ("chelsea_gray.jpg", "Minduka_Present_Blue_Pack.png", "coffee.png")
    if os.path.exists(os.path.join(SAMPLES, name))
]
UPLOADS = {"/api/v1/classify": "file", "/api/v1/predict": "file", "/api/v1/classify/batch": "files"}


def is_binary(value):
    """Generated file contents: bytes, or schemathesis' own wrapper of them (`Binary`)."""
    return isinstance(value, bytes) or type(value).__name__ == "Binary"


@schemathesis.hook
def map_body(context, body):
    field = UPLOADS.get(context.operation.path) if context.operation else None
    if field is None or not PHOTOS or not isinstance(body, dict) or random.random() < 0.5:
        return body
    # Only replace file contents that are there and are binary: a body generated to violate the
    # schema (no file, or a file that is not binary) must stay as generated.
    present = body.get(field)
    if not (is_binary(present) or (isinstance(present, list) and present and all(map(is_binary, present)))):
        return body
    body = dict(body)
    photo = random.choice(PHOTOS)
    body[field] = [photo] * len(present) if field == "files" else photo
    return body
