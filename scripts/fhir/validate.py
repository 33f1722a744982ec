"""Checks a FHIR R4 JSON Bundle with fhir.resources 6.4.0 (structure, types, cardinality).

Usage: validate.py BUNDLE.json -- exit 0 when valid, 1 with the errors otherwise."""
import json
import sys

from fhir.resources.bundle import Bundle
from pydantic import ValidationError

with open(sys.argv[1], encoding="utf-8") as f:
    data = json.load(f)
try:
    bundle = Bundle.parse_obj(data)
except ValidationError as e:
    print(e)
    sys.exit(1)
print(f"fhir.resources: valid Bundle of {len(bundle.entry or [])} entries")
